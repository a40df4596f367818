//! Page tokens: opaque to callers, parsed (never trusted) here.

use super::ids::JobId;
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Where a page of jobs (newest first) continues: after this job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobCursor {
    pub created_at: DateTime<Utc>,
    pub id: JobId,
}

impl JobCursor {
    pub fn encode(&self) -> String {
        let text = format!("j1:{}:{}", self.created_at.timestamp_micros(), self.id);
        URL_SAFE_NO_PAD.encode(text)
    }

    pub fn decode(token: &str) -> Result<JobCursor, String> {
        let bad = || "is not a page token returned by ListJobs".to_string();
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
        let text = String::from_utf8(bytes).map_err(|_| bad())?;
        let mut parts = text.splitn(3, ':');
        let (Some("j1"), Some(micros), Some(id)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let micros: i64 = micros.parse().map_err(|_| bad())?;
        let created_at = DateTime::from_timestamp_micros(micros).ok_or_else(bad)?;
        let id = Uuid::parse_str(id).map_err(|_| bad())?;
        Ok(JobCursor {
            created_at,
            id: JobId(id),
        })
    }
}

/// Where a page of items continues: after this index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemCursor {
    pub after_index: u32,
}

impl ItemCursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("i1:{}", self.after_index))
    }

    pub fn decode(token: &str) -> Result<ItemCursor, String> {
        let bad = || "is not a page token returned by ListJobItems".to_string();
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
        let text = String::from_utf8(bytes).map_err(|_| bad())?;
        let index = text.strip_prefix("i1:").ok_or_else(bad)?;
        Ok(ItemCursor {
            after_index: index.parse().map_err(|_| bad())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let c = JobCursor {
            created_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            id: JobId::new(),
        };
        assert_eq!(JobCursor::decode(&c.encode()), Ok(c));
        assert!(JobCursor::decode("garbage!").is_err());
        assert!(JobCursor::decode(&ItemCursor { after_index: 3 }.encode()).is_err());
        let i = ItemCursor { after_index: 41 };
        assert_eq!(ItemCursor::decode(&i.encode()), Ok(i));
        assert!(ItemCursor::decode(&c.encode()).is_err());
    }
}
