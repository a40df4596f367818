//! Identifiers that parse, not validate: holding a `JobId` means the text
//! was a UUID.

use std::{fmt, str::FromStr};
use uuid::Uuid;

/// A job's id: a UUID the server assigns.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct JobId(pub Uuid);

impl JobId {
    /// A fresh random id.
    pub fn new() -> Self {
        JobId(Uuid::new_v4())
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl FromStr for JobId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err("is required".into());
        }
        Uuid::parse_str(s)
            .map(JobId)
            .map_err(|_| format!("{} is not a UUID", super::spec::echo(s)))
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_uuids_only() {
        let id = JobId::new();
        assert_eq!(id.to_string().parse::<JobId>(), Ok(id));
        assert_eq!("".parse::<JobId>(), Err("is required".to_string()));
        assert!(
            "not-a-uuid"
                .parse::<JobId>()
                .unwrap_err()
                .contains("not a UUID")
        );
    }
}
