//! Zipkin's B3 trace-context headers, for meshes and proxies that still
//! speak them (OpenTelemetry's `b3` and `b3multi` propagators).
//!
//! Single header: `b3: {trace id}-{span id}-{sampled}[-{parent span id}]`;
//! several headers: `X-B3-TraceId`, `X-B3-SpanId`, `X-B3-Sampled` (and
//! `X-B3-Flags: 1`, debug, which implies sampled). Both are read whichever
//! is configured, the single header first, as OpenTelemetry's B3
//! requirements say; the configured one is written. Trace ids of 16 hex
//! digits are left-padded to 32. The parent span id is never written (an
//! OpenTelemetry span has its own id on each side) and the debug flag is
//! read as sampled: OpenTelemetry has no place for either.
//!
//! A few dozen lines here rather than `opentelemetry-zipkin`, whose
//! propagator comes with a Zipkin exporter and its HTTP client.

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator, text_map_propagator::FieldIter},
    trace::{SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState},
};

const SINGLE: &str = "b3";
const TRACE_ID: &str = "x-b3-traceid";
const SPAN_ID: &str = "x-b3-spanid";
const PARENT_SPAN_ID: &str = "x-b3-parentspanid";
const SAMPLED: &str = "x-b3-sampled";
const FLAGS: &str = "x-b3-flags";

/// Which B3 form is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum B3Encoding {
    /// One `b3` header (`OTEL_PROPAGATORS=b3`).
    Single,
    /// `X-B3-*` headers (`OTEL_PROPAGATORS=b3multi`).
    Multiple,
}

/// B3 as a `TextMapPropagator`.
#[derive(Debug)]
pub struct B3Propagator {
    encoding: B3Encoding,
    /// The headers written, so carriers can clear stale ones
    /// (`TextMapPropagator::fields`).
    fields: Vec<String>,
}

impl B3Propagator {
    pub fn new(encoding: B3Encoding) -> Self {
        let fields: &[&str] = match encoding {
            B3Encoding::Single => &[SINGLE],
            B3Encoding::Multiple => &[TRACE_ID, SPAN_ID, PARENT_SPAN_ID, SAMPLED, FLAGS],
        };
        B3Propagator {
            encoding,
            fields: fields.iter().map(|f| f.to_string()).collect(),
        }
    }
}

/// `text` if it is exactly `len` lowercase hex digits.
fn lower_hex(text: &str, len: usize) -> Option<&str> {
    (text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then_some(text)
}

fn trace_id(text: &str) -> Option<TraceId> {
    let text = text.trim();
    let padded = match text.len() {
        16 => format!("{:0>32}", lower_hex(text, 16)?),
        _ => lower_hex(text, 32)?.to_string(),
    };
    TraceId::from_hex(&padded).ok()
}

fn span_id(text: &str) -> Option<SpanId> {
    SpanId::from_hex(lower_hex(text.trim(), 16)?).ok()
}

fn remote(trace: TraceId, span: SpanId, sampled: bool) -> Option<SpanContext> {
    let flags = if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let context = SpanContext::new(trace, span, flags, true, TraceState::default());
    context.is_valid().then_some(context)
}

/// `b3: {trace}-{span}[-{sampled}[-{parent}]]`. A lone sampling decision
/// (`b3: 0`) carries no ids, so no parent.
fn extract_single(extractor: &dyn Extractor) -> Option<SpanContext> {
    let parts: Vec<&str> = extractor.get(SINGLE)?.trim().split('-').collect();
    if !(2..=4).contains(&parts.len()) {
        return None;
    }
    let sampled = match parts.get(2) {
        None => false,
        Some(&"1" | &"d") => true,
        Some(&"0") => false,
        Some(_) => return None,
    };
    if let Some(parent) = parts.get(3) {
        span_id(parent)?;
    }
    remote(trace_id(parts[0])?, span_id(parts[1])?, sampled)
}

fn extract_multiple(extractor: &dyn Extractor) -> Option<SpanContext> {
    let debug = extractor.get(FLAGS).map(str::trim) == Some("1");
    let sampled = match extractor.get(SAMPLED).map(str::trim) {
        None => false,
        Some("1" | "true") => true,
        Some("0" | "false") => false,
        Some(_) => return None,
    };
    remote(
        trace_id(extractor.get(TRACE_ID)?)?,
        span_id(extractor.get(SPAN_ID)?)?,
        sampled || debug,
    )
}

impl TextMapPropagator for B3Propagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let context = span.span_context();
        if !context.is_valid() {
            return;
        }
        let sampled = if context.is_sampled() { "1" } else { "0" };
        match self.encoding {
            B3Encoding::Single => injector.set(
                SINGLE,
                format!("{}-{}-{sampled}", context.trace_id(), context.span_id()),
            ),
            B3Encoding::Multiple => {
                injector.set(TRACE_ID, context.trace_id().to_string());
                injector.set(SPAN_ID, context.span_id().to_string());
                injector.set(SAMPLED, sampled.to_string());
            }
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        match extract_single(extractor).or_else(|| extract_multiple(extractor)) {
            Some(remote) => cx.with_remote_span_context(remote),
            None => cx.clone(),
        }
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(&self.fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    fn extract(headers: &[(&str, &str)]) -> Option<SpanContext> {
        let carrier: HashMap<String, String> = headers
            .iter()
            .map(|(k, v)| (k.to_lowercase(), v.to_string()))
            .collect();
        let cx =
            B3Propagator::new(B3Encoding::Single).extract_with_context(&Context::new(), &carrier);
        let span = cx.span();
        let context = span.span_context();
        context.is_valid().then(|| context.clone())
    }

    fn ids(context: &SpanContext) -> (String, String, bool, bool) {
        (
            context.trace_id().to_string(),
            context.span_id().to_string(),
            context.is_sampled(),
            context.is_remote(),
        )
    }

    #[test]
    fn reads_the_single_header() {
        let full = (TRACE.to_string(), SPAN.to_string(), true, true);
        for value in [
            format!("{TRACE}-{SPAN}-1"),
            format!("{TRACE}-{SPAN}-d"),
            format!("{TRACE}-{SPAN}-1-0000000000000001"),
            format!(" {TRACE}-{SPAN}-1 "),
        ] {
            let context = extract(&[("b3", &value)]).unwrap_or_else(|| panic!("{value}"));
            assert_eq!(ids(&context), full, "{value}");
        }
        let unsampled = extract(&[("b3", &format!("{TRACE}-{SPAN}-0"))]).unwrap();
        assert!(!unsampled.is_sampled());
        let deferred = extract(&[("b3", &format!("{TRACE}-{SPAN}"))]).unwrap();
        assert!(!deferred.is_sampled());
        // 64-bit trace ids are left-padded.
        let short = extract(&[("b3", &format!("a3ce929d0e0e4736-{SPAN}-1"))]).unwrap();
        assert_eq!(
            short.trace_id().to_string(),
            "0000000000000000a3ce929d0e0e4736"
        );
    }

    #[test]
    fn reads_the_multiple_headers() {
        let context = extract(&[
            ("X-B3-TraceId", TRACE),
            ("X-B3-SpanId", SPAN),
            ("X-B3-Sampled", "1"),
        ])
        .unwrap();
        assert_eq!(ids(&context), (TRACE.into(), SPAN.into(), true, true));
        let debug = extract(&[
            ("X-B3-TraceId", TRACE),
            ("X-B3-SpanId", SPAN),
            ("X-B3-Flags", "1"),
        ])
        .unwrap();
        assert!(debug.is_sampled());
        let unsampled = extract(&[
            ("X-B3-TraceId", TRACE),
            ("X-B3-SpanId", SPAN),
            ("X-B3-Sampled", "0"),
        ])
        .unwrap();
        assert!(!unsampled.is_sampled());
    }

    #[test]
    fn the_single_header_wins() {
        let other_trace = "0af7651916cd43dd8448eb211c80319c";
        let context = extract(&[
            ("b3", &format!("{TRACE}-{SPAN}-1")),
            ("X-B3-TraceId", other_trace),
            ("X-B3-SpanId", "b7ad6b7169203331"),
        ])
        .unwrap();
        assert_eq!(context.trace_id().to_string(), TRACE);
    }

    #[test]
    fn refuses_malformed_headers() {
        let zeros = "0".repeat(32);
        for value in [
            "0".to_string(),
            "1".to_string(),
            TRACE.to_string(),
            format!("{TRACE}-{SPAN}-2"),
            format!("{TRACE}-{SPAN}-1-xyz"),
            format!("{TRACE}-{SPAN}-1-{SPAN}-extra"),
            format!("{}-{SPAN}-1", TRACE.to_uppercase()),
            format!("{TRACE}0-{SPAN}-1"),
            format!("{TRACE}-{SPAN}0-1"),
            format!("{zeros}-{SPAN}-1"),
            format!("{TRACE}-0000000000000000-1"),
        ] {
            assert!(extract(&[("b3", &value)]).is_none(), "{value}");
        }
        assert!(
            extract(&[
                ("X-B3-TraceId", TRACE),
                ("X-B3-SpanId", SPAN),
                ("X-B3-Sampled", "yes"),
            ])
            .is_none()
        );
        assert!(extract(&[("X-B3-TraceId", TRACE)]).is_none());
    }

    fn inject(encoding: B3Encoding, sampled: bool) -> HashMap<String, String> {
        let flags = if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let context = SpanContext::new(
            TraceId::from_hex(TRACE).unwrap(),
            SpanId::from_hex(SPAN).unwrap(),
            flags,
            false,
            TraceState::default(),
        );
        let mut carrier = HashMap::new();
        B3Propagator::new(encoding).inject_context(
            &Context::new().with_remote_span_context(context),
            &mut carrier,
        );
        carrier
    }

    #[test]
    fn writes_the_configured_form() {
        assert_eq!(
            inject(B3Encoding::Single, true),
            HashMap::from([("b3".to_string(), format!("{TRACE}-{SPAN}-1"))])
        );
        assert_eq!(
            inject(B3Encoding::Single, false)["b3"],
            format!("{TRACE}-{SPAN}-0")
        );
        assert_eq!(
            inject(B3Encoding::Multiple, true),
            HashMap::from([
                ("x-b3-traceid".to_string(), TRACE.to_string()),
                ("x-b3-spanid".to_string(), SPAN.to_string()),
                ("x-b3-sampled".to_string(), "1".to_string()),
            ])
        );
        // Nothing for no span.
        let mut carrier = HashMap::new();
        B3Propagator::new(B3Encoding::Multiple).inject_context(&Context::new(), &mut carrier);
        assert!(carrier.is_empty());
    }

    #[test]
    fn what_is_written_is_read_back() {
        for encoding in [B3Encoding::Single, B3Encoding::Multiple] {
            for sampled in [true, false] {
                let carrier = inject(encoding, sampled);
                let cx =
                    B3Propagator::new(encoding).extract_with_context(&Context::new(), &carrier);
                assert_eq!(
                    ids(cx.span().span_context()),
                    (TRACE.into(), SPAN.into(), sampled, true),
                    "{encoding:?}"
                );
            }
        }
    }
}
