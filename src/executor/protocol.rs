//! The line protocol programs speak on stdout, and the bounded tail of
//! everything else they print.
//!
//! ```text
//! @checkpoint <text>        save <text> as the item's checkpoint (durable
//!                           before any later line or the exit counts)
//! @progress <fraction>      0.0 to 1.0 of the item done
//! @progress <done>/<total>  the same as a counter
//! @result <text>            the item's result, kept when it succeeds
//! @retry-after <wait>       if this attempt fails and is retried, wait at
//!                           least this long first: seconds (30, 2.5) or
//!                           a duration (30s, 2m, 1h 30m); at most a day
//! @skip <why>               the item was done already: if the program
//!                           exits 0, it ends SUCCEEDED, marked skipped
//! @count <name> <n>         add n (a whole number, not negative) to the
//!                           counter <name> (a-z, 0-9, _): counted for the
//!                           job if this attempt succeeds
//! ```
//! A line starting with `@` that is none of these is kept in the log tail
//! with a note, so a typo shows up in the item's error instead of vanishing.

use std::collections::VecDeque;

/// What one stdout line says.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    Checkpoint(String),
    Progress(f32),
    Result(String),
    RetryAfter(std::time::Duration),
    Skip(String),
    Count(String, i64),
    /// Looked like a protocol line but was not one.
    Invalid(&'static str),
    /// Ordinary output.
    Output,
}

pub fn parse_line(line: &str) -> Line {
    let Some(rest) = line.strip_prefix('@') else {
        return Line::Output;
    };
    let (word, arg) = rest.split_once(' ').unwrap_or((rest, ""));
    match word {
        "checkpoint" => Line::Checkpoint(arg.to_string()),
        "result" => Line::Result(arg.to_string()),
        "progress" => match parse_progress(arg.trim()) {
            Some(f) => Line::Progress(f),
            None => Line::Invalid("@progress takes a fraction (0.5) or a counter (3/10)"),
        },
        "retry-after" => match parse_wait(arg.trim()) {
            Some(wait) => Line::RetryAfter(wait),
            None => Line::Invalid("@retry-after takes seconds (30) or a duration (30s, 2m)"),
        },
        "skip" => match arg.trim() {
            "" => Line::Invalid("@skip takes a reason (@skip output exists)"),
            why => Line::Skip(why.to_string()),
        },
        "count" => match parse_count(arg) {
            Some((name, n)) => Line::Count(name, n),
            None => Line::Invalid("@count takes a name and a whole number (@count frames 120)"),
        },
        _ => Line::Output,
    }
}

/// `<name> <n>`, with `n` a whole number; the name and the sign are checked
/// where the count is added.
fn parse_count(arg: &str) -> Option<(String, i64)> {
    let mut words = arg.split_whitespace();
    let (name, n, rest) = (words.next()?, words.next()?, words.next());
    if rest.is_some() {
        return None;
    }
    Some((name.to_string(), n.parse().ok()?))
}

/// Seconds, as HTTP's Retry-After gives them (with a fraction allowed),
/// or a duration with units.
fn parse_wait(arg: &str) -> Option<std::time::Duration> {
    match arg.parse::<f64>() {
        Ok(secs) => std::time::Duration::try_from_secs_f64(secs).ok(),
        Err(_) => humantime::parse_duration(arg).ok(),
    }
}

fn parse_progress(arg: &str) -> Option<f32> {
    let fraction = match arg.split_once('/') {
        Some((done, total)) => {
            let done: f64 = done.trim().parse().ok()?;
            let total: f64 = total.trim().parse().ok()?;
            if total <= 0.0 {
                return None;
            }
            done / total
        }
        None => arg.parse().ok()?,
    };
    fraction
        .is_finite()
        .then_some(fraction.clamp(0.0, 1.0) as f32)
}

/// The last lines a program printed, at most `limit` bytes.
#[derive(Debug)]
pub struct LogTail {
    lines: VecDeque<String>,
    bytes: usize,
    limit: usize,
    dropped: bool,
}

impl LogTail {
    pub fn new(limit: usize) -> Self {
        LogTail {
            lines: VecDeque::new(),
            bytes: 0,
            limit,
            dropped: false,
        }
    }

    pub fn push(&mut self, line: &str) {
        let mut line = line.to_string();
        // Every line costs its length plus a newline.
        if line.len() >= self.limit {
            let mut cut = self.limit.saturating_sub(1);
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
        }
        self.bytes += line.len() + 1;
        self.lines.push_back(line);
        while self.bytes > self.limit {
            match self.lines.pop_front() {
                Some(old) => {
                    self.bytes -= old.len() + 1;
                    self.dropped = true;
                }
                None => break,
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The tail as text, with a marker when older lines were dropped.
    pub fn text(&self) -> String {
        let mut text = String::new();
        if self.dropped {
            text.push_str("[…]\n");
        }
        for line in &self.lines {
            text.push_str(line);
            text.push('\n');
        }
        text.pop();
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_protocol_lines() {
        assert_eq!(
            parse_line("@checkpoint frame=120"),
            Line::Checkpoint("frame=120".into())
        );
        assert_eq!(parse_line("@checkpoint"), Line::Checkpoint(String::new()));
        assert_eq!(parse_line("@progress 0.25"), Line::Progress(0.25));
        assert_eq!(parse_line("@progress 3/12"), Line::Progress(0.25));
        assert_eq!(parse_line("@progress 7"), Line::Progress(1.0));
        assert!(matches!(parse_line("@progress x"), Line::Invalid(_)));
        assert!(matches!(parse_line("@progress 1/0"), Line::Invalid(_)));
        assert_eq!(parse_line("@result ok"), Line::Result("ok".into()));
        let wait = |secs: f64| Line::RetryAfter(std::time::Duration::from_secs_f64(secs));
        assert_eq!(parse_line("@retry-after 30"), wait(30.0));
        assert_eq!(parse_line("@retry-after 2.5"), wait(2.5));
        assert_eq!(parse_line("@retry-after 2m"), wait(120.0));
        assert_eq!(parse_line("@retry-after 1h 30m"), wait(5400.0));
        for bad in ["", "-1", "soon", "NaN", "inf"] {
            let line = format!("@retry-after {bad}");
            assert!(matches!(parse_line(&line), Line::Invalid(_)), "{line}");
        }
        assert_eq!(
            parse_line("@skip out.mp4 exists"),
            Line::Skip("out.mp4 exists".into())
        );
        assert!(matches!(parse_line("@skip "), Line::Invalid(_)));
        assert_eq!(
            parse_line("@count frames 120"),
            Line::Count("frames".into(), 120)
        );
        for bad in ["@count frames", "@count frames x", "@count a 1 2", "@count"] {
            assert!(matches!(parse_line(bad), Line::Invalid(_)), "{bad}");
        }
        assert_eq!(parse_line("hello"), Line::Output);
        assert_eq!(parse_line("@user mentioned"), Line::Output);
    }

    #[test]
    fn the_tail_keeps_the_last_bytes() {
        let mut tail = LogTail::new(10);
        tail.push("aaaa");
        tail.push("bbbb");
        assert_eq!(tail.text(), "aaaa\nbbbb");
        tail.push("cccc");
        assert_eq!(tail.text(), "[…]\nbbbb\ncccc");
        tail.push(&"x".repeat(50));
        assert_eq!(tail.text(), "[…]\nxxxxxxxxx");
    }
}
