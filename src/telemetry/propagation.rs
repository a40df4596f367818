//! How trace context crosses process boundaries: which formats are read
//! from incoming calls (`OTEL_PROPAGATORS`, as the OpenTelemetry
//! environment specification defines it) and how an item's context
//! reaches the program that works on it (environment variables, as the
//! OpenTelemetry specification for environment carriers says).

use super::b3::{B3Encoding, B3Propagator};
use opentelemetry::{
    Context,
    propagation::{Injector, TextMapCompositePropagator, TextMapPropagator},
};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The formats used when `OTEL_PROPAGATORS` is unset or empty.
pub const DEFAULT_PROPAGATORS: &str = "tracecontext,baggage";

/// The names `OTEL_PROPAGATORS` may list.
const KNOWN: &[&str] = &["tracecontext", "baggage", "b3", "b3multi", "none"];

/// A bad `OTEL_PROPAGATORS`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PropagatorsError {
    #[error(
        "OTEL_PROPAGATORS: unknown propagator {0:?}; jobvisor knows {known}",
        known = KNOWN.join(", ")
    )]
    Unknown(String),
    #[error("OTEL_PROPAGATORS: \"none\" cannot be combined with other propagators ({0:?})")]
    NoneWithOthers(String),
}

/// The propagator for an `OTEL_PROPAGATORS` value (comma-separated names,
/// in order; unset or blank: [`DEFAULT_PROPAGATORS`]; `none`: none).
pub fn from_setting(setting: Option<&str>) -> Result<TextMapCompositePropagator, PropagatorsError> {
    let setting = setting
        .filter(|s| !s.trim().is_empty())
        .unwrap_or(DEFAULT_PROPAGATORS);
    let mut names: Vec<String> = Vec::new();
    for name in setting.split(',').map(|n| n.trim().to_ascii_lowercase()) {
        if name.is_empty() || names.contains(&name) {
            continue;
        }
        if !KNOWN.contains(&name.as_str()) {
            return Err(PropagatorsError::Unknown(name));
        }
        names.push(name);
    }
    if names.iter().any(|n| n == "none") && names.len() > 1 {
        return Err(PropagatorsError::NoneWithOthers(setting.to_string()));
    }
    let propagators = names
        .iter()
        .filter_map(|name| -> Option<Box<dyn TextMapPropagator + Send + Sync>> {
            match name.as_str() {
                "tracecontext" => Some(Box::new(TraceContextPropagator::new())),
                "baggage" => Some(Box::new(BaggagePropagator::new())),
                "b3" => Some(Box::new(B3Propagator::new(B3Encoding::Single))),
                "b3multi" => Some(Box::new(B3Propagator::new(B3Encoding::Multiple))),
                _ => None,
            }
        })
        .collect();
    Ok(TextMapCompositePropagator::new(propagators))
}

/// A propagation field as an environment variable name: upper case, and
/// anything but letters, digits and `_` as `_` (`x-b3-traceid` →
/// `X_B3_TRACEID`, `traceparent` → `TRACEPARENT`).
pub fn variable_name(field: &str) -> String {
    field
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

struct Variables(Vec<(String, Option<String>)>);

impl Injector for Variables {
    fn set(&mut self, key: &str, value: String) {
        let name = variable_name(key);
        // An empty tracestate says nothing: leave the variable out.
        let value = (!value.is_empty()).then_some(value);
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some(entry) => entry.1 = value,
            None => self.0.push((name, value)),
        }
    }
}

/// The environment a child process gets for trace context `cx`, with the
/// process-wide propagators: each variable they use, with its value, or
/// `None` where the child must not inherit one from this process (there is
/// no context to pass, or the format leaves that field out).
pub fn child_environment(cx: &Context) -> Vec<(String, Option<String>)> {
    opentelemetry::global::get_text_map_propagator(|propagator| environment(propagator, cx))
}

/// The propagation headers of the current `tracing` span (an item's span
/// while its executor runs), with the process-wide propagators, as a
/// remote worker gets them with its assignment: empty when not traced.
pub fn current_span_headers() -> std::collections::BTreeMap<String, String> {
    let cx = tracing::Span::current().context();
    let mut headers = std::collections::HashMap::new();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&cx, &mut headers)
    });
    headers.into_iter().filter(|(_, v)| !v.is_empty()).collect()
}

/// The trace context that propagation `headers` carry, with the
/// process-wide propagators (an assignment's `trace_context`).
pub fn context_from_headers<S: std::hash::BuildHasher>(
    headers: &std::collections::HashMap<String, String, S>,
) -> Context {
    opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(headers))
}

/// [`child_environment`] for the current `tracing` span (an item's span
/// while its executor runs).
pub fn current_span_environment() -> Vec<(String, Option<String>)> {
    child_environment(&tracing::Span::current().context())
}

fn environment(propagator: &dyn TextMapPropagator, cx: &Context) -> Vec<(String, Option<String>)> {
    let mut variables = Variables(
        propagator
            .fields()
            .map(|field| (variable_name(field), None))
            .collect(),
    );
    propagator.inject_context(cx, &mut variables);
    variables.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    };

    /// The fields of the propagators `setting` names, sorted (the
    /// composite propagator keeps them in a set).
    fn fields(setting: Option<&str>) -> Vec<String> {
        let mut fields: Vec<String> = from_setting(setting)
            .unwrap()
            .fields()
            .map(String::from)
            .collect();
        fields.sort();
        fields
    }

    #[test]
    fn the_default_is_trace_context_and_baggage() {
        let default = ["baggage", "traceparent", "tracestate"];
        assert_eq!(fields(None), default);
        assert_eq!(fields(Some("")), default);
        assert_eq!(fields(Some("  ")), default);
        assert_eq!(fields(Some("tracecontext,baggage")), default);
    }

    #[test]
    fn names_are_read_case_blind_and_once() {
        assert_eq!(fields(Some("b3")), ["b3"]);
        assert_eq!(
            fields(Some(" B3Multi , tracecontext,b3multi")),
            [
                "traceparent",
                "tracestate",
                "x-b3-flags",
                "x-b3-parentspanid",
                "x-b3-sampled",
                "x-b3-spanid",
                "x-b3-traceid",
            ]
        );
        assert!(fields(Some("none")).is_empty());
    }

    #[test]
    fn unknown_names_are_refused_by_name() {
        for (setting, bad) in [
            ("tracecontext,zipkin", "zipkin"),
            ("jaeger", "jaeger"),
            ("xray", "xray"),
        ] {
            let error = from_setting(Some(setting)).unwrap_err();
            assert_eq!(error, PropagatorsError::Unknown(bad.into()));
            let message = error.to_string();
            assert!(
                message.starts_with("OTEL_PROPAGATORS") && message.contains(bad),
                "{message}"
            );
        }
        assert!(matches!(
            from_setting(Some("none,b3")),
            Err(PropagatorsError::NoneWithOthers(_))
        ));
    }

    #[test]
    fn fields_become_portable_variable_names() {
        assert_eq!(variable_name("traceparent"), "TRACEPARENT");
        assert_eq!(variable_name("x-b3-traceid"), "X_B3_TRACEID");
        assert_eq!(variable_name("ot.baggage"), "OT_BAGGAGE");
    }

    fn variables(setting: &str, cx: &Context) -> Vec<(String, Option<String>)> {
        let mut variables = environment(&from_setting(Some(setting)).unwrap(), cx);
        variables.sort();
        variables
    }

    #[test]
    fn a_context_becomes_variables_and_no_context_clears_them() {
        let span = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let cx = Context::new().with_remote_span_context(span);
        let some = |s: &str| Some(s.to_string());
        assert_eq!(
            variables("tracecontext,baggage", &cx),
            [
                ("BAGGAGE".to_string(), None),
                (
                    "TRACEPARENT".to_string(),
                    some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                ),
                ("TRACESTATE".to_string(), None),
            ]
        );
        assert_eq!(
            variables("b3", &cx),
            [(
                "B3".to_string(),
                some("4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1")
            )]
        );
        let none: Vec<_> = variables("tracecontext,b3multi", &Context::new());
        assert!(none.iter().all(|(_, v)| v.is_none()), "{none:?}");
        assert_eq!(none.len(), 7);
    }
}
