//! Counters of an executor's own (frames processed, detections found):
//! named sums an item's attempt reports as it runs, counted for the job
//! only when that attempt succeeds, in the same commit as its success. An
//! item that is retried, interrupted or run again after a crash therefore
//! counts once: the attempts that did not succeed report nothing.

use std::collections::BTreeMap;

/// A job's counters, or one attempt's: name to sum.
pub type Counters = BTreeMap<String, i64>;

/// Distinct counter names one attempt may report.
pub const MAX_ATTEMPT_COUNTERS: usize = 32;

/// Distinct counter names a job may hold: a success that would add a name
/// past this fails instead (a counter per item, say, is a mistake that
/// would otherwise grow the job's row without bound).
pub const MAX_JOB_COUNTERS: usize = 64;

/// The longest counter name.
pub const MAX_COUNTER_NAME: usize = 64;

/// Checks a counter's name: 1 to 64 of `a-z`, `0-9`, `_`, starting with a
/// letter (the names a metric label or a column would take).
pub fn check_counter_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a counter needs a name".into());
    }
    if name.len() > MAX_COUNTER_NAME {
        return Err(format!(
            "counter name {name:?} is {} characters; the limit is {MAX_COUNTER_NAME}",
            name.len()
        ));
    }
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    if !first_ok || !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        return Err(format!(
            "counter name {name:?} must start with a-z and hold only a-z, 0-9 and _"
        ));
    }
    Ok(())
}

/// Adds `n` to `name` in one attempt's counters, checking the name, the
/// amount (not negative) and the number of names.
pub fn add_count(counters: &mut Counters, name: &str, n: i64) -> Result<(), String> {
    check_counter_name(name)?;
    if n < 0 {
        return Err(format!(
            "counter {name:?}: {n} is negative; counters only grow"
        ));
    }
    if !counters.contains_key(name) && counters.len() >= MAX_ATTEMPT_COUNTERS {
        return Err(format!(
            "counter {name:?}: an item may report at most {MAX_ATTEMPT_COUNTERS} counters"
        ));
    }
    let sum = counters.entry(name.to_string()).or_insert(0);
    *sum = sum.saturating_add(n);
    Ok(())
}

/// Adds `more` into `into` (sums saturate).
pub fn merge(into: &mut Counters, more: &Counters) {
    for (name, n) in more {
        let sum = into.entry(name.clone()).or_insert(0);
        *sum = sum.saturating_add(*n);
    }
}

/// Reads counters stored as a JSON object of sums; a value that is not a
/// whole number (or passes i64, which sums of JSON numbers may) is read
/// saturated, never refused: the job must stay readable.
pub fn from_json(value: &serde_json::Value) -> Counters {
    let mut counters = Counters::new();
    if let Some(map) = value.as_object() {
        for (name, v) in map {
            let n = v
                .as_i64()
                .or_else(|| v.as_f64().map(|f| f.clamp(0.0, i64::MAX as f64) as i64))
                .unwrap_or(0);
            counters.insert(name.clone(), n);
        }
    }
    counters
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_amounts_and_their_number_are_checked() {
        let mut c = Counters::new();
        add_count(&mut c, "frames", 120).unwrap();
        add_count(&mut c, "frames", 5).unwrap();
        add_count(&mut c, "faces_2", 0).unwrap();
        assert_eq!(c["frames"], 125);
        for bad in ["", "Frames", "2x", "a-b", "a b", &"x".repeat(65)] {
            assert!(add_count(&mut c, bad, 1).is_err(), "{bad:?}");
        }
        let err = add_count(&mut c, "frames", -1).unwrap_err();
        assert!(err.contains("negative"), "{err}");
        add_count(&mut c, "frames", i64::MAX).unwrap();
        assert_eq!(c["frames"], i64::MAX);
        let mut many = Counters::new();
        for i in 0..MAX_ATTEMPT_COUNTERS {
            add_count(&mut many, &format!("c{i}"), 1).unwrap();
        }
        assert!(add_count(&mut many, "one_more", 1).is_err());
        // A name already there may still grow.
        add_count(&mut many, "c0", 1).unwrap();
    }

    #[test]
    fn stored_counters_read_back_saturated() {
        let v = serde_json::json!({"a": 3, "b": 1e30, "c": "x"});
        let c = from_json(&v);
        assert_eq!(c["a"], 3);
        assert_eq!(c["b"], i64::MAX);
        assert_eq!(c["c"], 0);
        let mut sum = Counters::from([("a".to_string(), 1)]);
        merge(&mut sum, &c);
        assert_eq!(sum["a"], 4);
    }
}
