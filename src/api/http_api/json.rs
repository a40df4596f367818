//! JSON ↔ protobuf for the HTTP API, by the canonical proto3 JSON mapping
//! (lowerCamelCase names, proto names accepted too; enums by name; 64-bit
//! integers as strings; Timestamp and Duration as RFC 3339 and `"1.5s"`),
//! through the descriptors the server already serves for reflection: no
//! second set of types to keep in step with the proto.
//!
//! A request's JSON becomes the RPC's protobuf request, which the gRPC
//! handlers then check as they check any other. What this module refuses
//! is what protobuf cannot say: JSON that does not parse, a field the
//! message does not have (named), a value of the wrong type (named), a
//! body that is not an object, a path or query value that clashes.

use crate::domain::FieldViolation;
use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor,
    MethodDescriptor, SerializeOptions,
};
use serde_json::{Map, Value};
use std::sync::OnceLock;

/// The JobService's descriptors, decoded once.
fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(crate::pb::FILE_DESCRIPTOR_SET)
            .expect("the descriptors built with the crate decode")
    })
}

/// The JobService method of this name (`PauseJob`). Only names of the
/// service are asked for: the routes name them.
pub fn method(name: &str) -> MethodDescriptor {
    pool()
        .get_service_by_name("jobvisor.v1.JobService")
        .expect("JobService is in the descriptors")
        .methods()
        .find(|m| m.name() == name)
        .unwrap_or_else(|| panic!("JobService has no method {name}"))
}

/// The JobEvent message, for WatchJob's events.
pub fn job_event() -> MessageDescriptor {
    pool()
        .get_message_by_name("jobvisor.v1.JobEvent")
        .expect("JobEvent is in the descriptors")
}

/// A request body as a JSON object: an empty body is `{}`.
pub fn body_object(body: &[u8]) -> Result<Map<String, Value>, FieldViolation> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(FieldViolation::new(
            "body",
            "must be a JSON object (the request message)",
        )),
        Err(e) => Err(FieldViolation::new(
            "body",
            format!("is not valid JSON: {e}"),
        )),
    }
}

/// Sets `field` (its proto name) to the value from the request's path,
/// refusing a body that names another value for it.
pub fn set_from_path(
    object: &mut Map<String, Value>,
    desc: &MessageDescriptor,
    field: &str,
    value: &str,
) -> Result<(), FieldViolation> {
    let descriptor = desc
        .get_field_by_name(field)
        .expect("a path parameter names a field of its message");
    for key in [descriptor.name(), descriptor.json_name()] {
        if let Some(given) = object.remove(key)
            && given.as_str() != Some(value)
        {
            return Err(FieldViolation::new(
                key,
                format!("differs from the path's {value:?}; leave it out of the body"),
            ));
        }
    }
    object.insert(descriptor.json_name().to_string(), Value::from(value));
    Ok(())
}

/// The fields of a query string (`page_size=10&states=JOB_STATE_RUNNING&
/// labels[team]=video`) as JSON members of `desc`'s message: a repeated
/// field by repeating it, a map field as `name[key]=value`. Names are the
/// proto's or the JSON's; anything else is refused, named.
pub fn query_object(
    desc: &MessageDescriptor,
    query: &str,
) -> Result<Map<String, Value>, FieldViolation> {
    let mut object = Map::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let (name, value) = (decode(name)?, decode(value)?);
        let (base, key) = match name.split_once('[') {
            Some((base, rest)) if rest.ends_with(']') => {
                (base.to_string(), Some(rest[..rest.len() - 1].to_string()))
            }
            _ => (name.clone(), None),
        };
        let Some(field) = field_named(desc, &base) else {
            return Err(FieldViolation::new(
                name,
                format!("is not a query parameter of {}", desc.name()),
            ));
        };
        let member = object
            .entry(field.json_name().to_string())
            .or_insert_with(|| {
                if field.is_map() {
                    Value::Object(Map::new())
                } else if field.is_list() {
                    Value::Array(Vec::new())
                } else {
                    Value::Null
                }
            });
        match (key, member) {
            (Some(key), Value::Object(map)) => {
                map.insert(key, Value::from(value));
            }
            (None, Value::Array(list)) => list.push(scalar(&field, value)),
            (None, member @ Value::Null) if !field.is_map() => *member = scalar(&field, value),
            (None, Value::Object(_)) => {
                return Err(FieldViolation::new(
                    name,
                    format!("is a map: give each entry as {base}[key]=value"),
                ));
            }
            _ => {
                return Err(FieldViolation::new(
                    name,
                    "is given twice, or with [key] but is not a map",
                ));
            }
        }
    }
    Ok(object)
}

fn field_named(desc: &MessageDescriptor, name: &str) -> Option<FieldDescriptor> {
    desc.get_field_by_name(name)
        .or_else(|| desc.get_field_by_json_name(name))
}

/// A query value as the JSON value of its field: `true`/`false` for a
/// bool, a string otherwise (the JSON mapping takes numbers and enums as
/// strings too).
fn scalar(field: &FieldDescriptor, value: String) -> Value {
    match (field.kind(), value.as_str()) {
        (Kind::Bool, "true") => Value::Bool(true),
        (Kind::Bool, "false") => Value::Bool(false),
        _ => Value::String(value),
    }
}

/// A percent-encoded query component (`+` is a space, as forms send it).
fn decode(component: &str) -> Result<String, FieldViolation> {
    let spaced = component.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| FieldViolation::new("query", "is not percent-encoded UTF-8"))
}

/// The protobuf encoding of `desc`'s message from its JSON object, or the
/// bad field: one the message does not have, or a value of the wrong type.
pub fn encode(
    desc: &MessageDescriptor,
    object: Map<String, Value>,
) -> Result<Vec<u8>, FieldViolation> {
    let object = Value::Object(object);
    match decode_message(desc, &object) {
        Ok(message) => Ok(message.encode_to_vec()),
        Err(whole) => Err(object
            .as_object()
            .and_then(|object| bad_member(desc, object))
            .unwrap_or_else(|| {
                FieldViolation::new("body", format!("is not a {}: {whole}", desc.name()))
            })),
    }
}

/// Read from the JSON as it is (a StartJob's items are not copied).
fn decode_message(desc: &MessageDescriptor, value: &Value) -> Result<DynamicMessage, String> {
    // Unknown fields are refused (the default, said here because it is
    // the point).
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    DynamicMessage::deserialize_with_options(desc.clone(), value, &options)
        .map_err(|e| e.to_string())
}

/// Which member of the object is bad, and why: each is tried alone.
fn bad_member(desc: &MessageDescriptor, object: &Map<String, Value>) -> Option<FieldViolation> {
    object.iter().find_map(|(key, value)| {
        let alone = Map::from_iter([(key.clone(), value.clone())]);
        let why = decode_message(desc, &Value::Object(alone)).err()?;
        Some(match unknown_name(&why) {
            Some(unknown) if unknown == key => {
                FieldViolation::new(key.as_str(), format!("is not a field of {}", desc.name()))
            }
            // A field of a message inside this one.
            Some(unknown) => FieldViolation::new(
                format!("{key}.{unknown}"),
                format!("is not a field of {key}"),
            ),
            None => FieldViolation::new(key.as_str(), why),
        })
    })
}

/// The field name in the JSON decoder's "unrecognized field name 'x'".
fn unknown_name(error: &str) -> Option<&str> {
    let rest = error.split("unrecognized field name '").nth(1)?;
    rest.split('\'').next()
}

/// The JSON of a protobuf message of `desc`'s type: every field, set or
/// not, so a client sees `0` counts and empty lists rather than nothing.
pub fn to_json(desc: &MessageDescriptor, protobuf: &[u8]) -> Result<Vec<u8>, String> {
    let message = DynamicMessage::decode(desc.clone(), protobuf).map_err(|e| e.to_string())?;
    message_json(&message)
}

/// [`to_json`] of a message decoded already.
pub fn message_json(message: &DynamicMessage) -> Result<Vec<u8>, String> {
    let options = SerializeOptions::new().skip_default_fields(false);
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::new(&mut out);
    message
        .serialize_with_options(&mut serializer, &options)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;
    use prost::Message;

    fn request(method_name: &str, json: &str) -> Result<Vec<u8>, FieldViolation> {
        let input = method(method_name).input();
        let object = body_object(json.as_bytes())?;
        encode(&input, object)
    }

    #[test]
    fn a_request_is_read_by_the_json_mapping() {
        let bytes = request(
            "PauseJob",
            r#"{"jobId": "x", "mode": "PAUSE_MODE_IMMEDIATE", "reason": "deploy",
                "drain_timeout": "1.5s", "resumeAt": "2030-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        let pause = pb::PauseJobRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(pause.job_id, "x");
        assert_eq!(pause.mode, pb::PauseMode::Immediate as i32);
        assert_eq!(pause.reason, "deploy");
        assert_eq!(
            pause.drain_timeout,
            Some(prost_types::Duration {
                seconds: 1,
                nanos: 500_000_000
            })
        );
        assert!(pause.resume_at.is_some());
    }

    #[test]
    fn bad_bodies_name_what_is_wrong() {
        let unknown = request("PauseJob", r#"{"jobId": "x", "reasn": "typo"}"#).unwrap_err();
        assert_eq!(unknown.field, "reasn");
        assert!(
            unknown.description.contains("PauseJobRequest"),
            "{unknown:?}"
        );
        let nested = request("RunJob", r#"{"job": {"nme": "a"}}"#).unwrap_err();
        assert_eq!(nested.field, "job.nme");
        let typed = request("SetJobConcurrency", r#"{"concurrency": "many"}"#).unwrap_err();
        assert_eq!(typed.field, "concurrency");
        let mode = request("PauseJob", r#"{"mode": "PAUSE_MODE_SOON"}"#).unwrap_err();
        assert_eq!(mode.field, "mode");
        assert_eq!(request("PauseJob", "{").unwrap_err().field, "body");
        assert_eq!(request("PauseJob", "[1]").unwrap_err().field, "body");
        assert!(request("ResumeJob", "").is_ok(), "an empty body is {{}}");
    }

    #[test]
    fn the_path_sets_its_field_and_a_body_may_not_contradict_it() {
        let desc = method("CancelJob").input();
        let mut object = body_object(br#"{"reason": "r"}"#).unwrap();
        set_from_path(&mut object, &desc, "job_id", "abc").unwrap();
        let cancel =
            pb::CancelJobRequest::decode(encode(&desc, object).unwrap().as_slice()).unwrap();
        assert_eq!(cancel.job_id, "abc");
        let mut object = body_object(br#"{"job_id": "other"}"#).unwrap();
        let clash = set_from_path(&mut object, &desc, "job_id", "abc").unwrap_err();
        assert_eq!(clash.field, "job_id");
    }

    #[test]
    fn a_query_string_fills_scalars_lists_and_maps() {
        let desc = method("ListJobs").input();
        let object = query_object(
            &desc,
            "page_size=5&states=JOB_STATE_RUNNING&states=JOB_STATE_PAUSED&labels%5Bteam%5D=video&labels[env]=prod+eu&pageToken=t",
        )
        .unwrap();
        let list = pb::ListJobsRequest::decode(encode(&desc, object).unwrap().as_slice()).unwrap();
        assert_eq!(list.page_size, 5);
        assert_eq!(list.page_token, "t");
        assert_eq!(
            list.states,
            vec![pb::JobState::Running as i32, pb::JobState::Paused as i32]
        );
        assert_eq!(list.labels["team"], "video");
        assert_eq!(list.labels["env"], "prod eu");
        assert_eq!(query_object(&desc, "color=red").unwrap_err().field, "color");
        assert_eq!(query_object(&desc, "labels=x").unwrap_err().field, "labels");
        let typed = encode(&desc, query_object(&desc, "page_size=lots").unwrap()).unwrap_err();
        assert_eq!(typed.field, "pageSize");
    }

    #[test]
    fn a_response_has_every_field_in_json_names() {
        let job = pb::Job {
            id: "j".into(),
            state: pb::JobState::Paused as i32,
            last_sequence: 7,
            ..Default::default()
        };
        let json: Value = serde_json::from_slice(
            &to_json(&method("GetJob").output(), &job.encode_to_vec()).unwrap(),
        )
        .unwrap();
        assert_eq!(json["state"], "JOB_STATE_PAUSED");
        assert_eq!(json["lastSequence"], "7");
        assert_eq!(json["concurrency"], 0);
        assert_eq!(json["labels"], serde_json::json!({}));
    }
}
