//! Items in pages: a job's items split into requests small enough for any
//! proxy on the way (nginx refuses a request body over 1 MiB by default)
//! and for the server's page limits, sent one after another. The first
//! page starts the job open (StartJob); the others are added to it
//! (AddItems), the last one closing it. Every call carries a request id
//! derived from one key for the whole upload, so a page whose answer was
//! lost is sent again without being added twice, and an upload started
//! again with the same `--request-id` picks up where it stopped.

use super::client::{Client, request, status_error, status_text, watch_backoff};
use crate::{
    domain::spec::{MAX_PAGE_BYTES, MAX_PAGE_ITEMS},
    pb,
};
use sha2::{Digest, Sha256};
use std::ops::Range;

/// The default size of a page: well under the 1 MiB body limit that nginx
/// and many proxies keep by default.
pub const DEFAULT_PAGE_BYTES: u32 = 512 * 1024;

/// Splits `items` into pages of at most `max_bytes` on the wire (each item
/// counted with its field's tag and length), at most [`MAX_PAGE_ITEMS`]
/// items and [`MAX_PAGE_BYTES`] of items: the ranges of `items` each page
/// holds, in order. An item bigger than a page goes alone. No items: no
/// pages.
pub fn split(items: &[String], max_bytes: usize) -> Vec<Range<usize>> {
    let max_bytes = max_bytes.min(MAX_PAGE_BYTES);
    let mut pages = Vec::new();
    let (mut start, mut bytes) = (0, 0usize);
    for (i, item) in items.iter().enumerate() {
        let size = item.len() + 1 + varint_len(item.len());
        if i > start && (bytes + size > max_bytes || i - start == MAX_PAGE_ITEMS) {
            pages.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < items.len() {
        pages.push(start..items.len());
    }
    pages
}

/// The bytes of a protobuf varint holding `n`.
fn varint_len(n: usize) -> usize {
    (usize::BITS as usize - (n | 1).leading_zeros() as usize).div_ceil(7)
}

/// Makes the call that starts an upload (StartJob, RunJob, with the
/// first page) until it succeeds or fails for good: the request carries
/// its request id, so a retry answers as the first call did.
pub async fn first_call<T, F, Fut>(what: &str, call: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    retried(what, &indicatif::ProgressBar::hidden(), call)
        .await
        .map(tonic::Response::into_inner)
        .map_err(status_error)
}

/// Makes `call` until it succeeds or fails for a reason a retry cannot
/// mend (see [`retryable`]), waiting as a resumed watch does in between
/// and saying so on stderr (above `bar`).
async fn retried<T, F, Fut>(
    what: &str,
    bar: &indicatif::ProgressBar,
    mut call: F,
) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let mut retries = watch_backoff();
    loop {
        match call().await {
            Ok(answer) => return Ok(answer),
            Err(status) => match retries.next().filter(|_| retryable(&status)) {
                Some(wait) => {
                    bar.suspend(|| {
                        eprintln!(
                            "{what} failed ({}); trying again in {}",
                            status_text(&status),
                            humantime::format_duration(wait)
                        )
                    });
                    tokio::time::sleep(wait).await;
                }
                None => return Err(status),
            },
        }
    }
}

/// Pages of items to add to a job.
pub struct Upload<'a> {
    pub job_id: &'a str,
    pub items: &'a [String],
    pub pages: &'a [Range<usize>],
    /// The upload's key: each page's request id is derived from it.
    pub key: &'a str,
    /// The last page closes the job.
    pub close: bool,
}

impl Upload<'_> {
    /// Sends every page in order, each retried on its own; returns the job
    /// as the last page left it. A progress bar on a terminal's stderr.
    pub async fn send(&self, client: &mut Client) -> anyhow::Result<pb::Job> {
        let bar = indicatif::ProgressBar::new(self.items.len() as u64).with_style(
            indicatif::ProgressStyle::with_template("sending {bar:40} {pos}/{len} items")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_position(self.pages.first().map_or(0, |p| p.start) as u64);
        let mut job = None;
        for (n, page) in self.pages.iter().enumerate() {
            let last = n + 1 == self.pages.len();
            let add = pb::AddItemsRequest {
                job_id: self.job_id.to_string(),
                items: self.items[page.clone()].to_vec(),
                request_id: page_key(self.key, page.start),
                close: self.close && last,
            };
            job = Some(self.add(client, add, page.start, &bar).await?);
            bar.set_position(page.end as u64);
        }
        bar.finish_and_clear();
        if self.close && self.pages.is_empty() {
            return self.close(client).await;
        }
        job.ok_or_else(|| anyhow::anyhow!("no items to send"))
    }

    /// Closes the job (an empty page with `close`).
    async fn close(&self, client: &mut Client) -> anyhow::Result<pb::Job> {
        let add = pb::AddItemsRequest {
            job_id: self.job_id.to_string(),
            items: Vec::new(),
            request_id: page_key(self.key, self.items.len()),
            close: true,
        };
        self.add(
            client,
            add,
            self.items.len(),
            &indicatif::ProgressBar::hidden(),
        )
        .await
    }

    /// One AddItems call, the page from the upload's item `first`,
    /// retried while the failure is the way's (a restart, a proxy's 502),
    /// not the request's.
    async fn add(
        &self,
        client: &mut Client,
        add: pb::AddItemsRequest,
        first: usize,
        bar: &indicatif::ProgressBar,
    ) -> anyhow::Result<pb::Job> {
        let answer = retried("sending items", bar, || {
            let (mut client, add) = (client.clone(), add.clone());
            async move { client.add_items(request(add)).await }
        })
        .await;
        match answer {
            Ok(answer) => answer
                .into_inner()
                .job
                .ok_or_else(|| anyhow::anyhow!("the server answered AddItems without the job")),
            Err(status) => {
                bar.abandon();
                Err(status_error(status).context(format!(
                    "the items from index {first} on were not sent to job {}; to go on, run the \
                     same command again with --request-id {} (pages already sent are not added \
                     twice)",
                    self.job_id, self.key
                )))
            }
        }
    }
}

/// The request id of the page starting at item `first` of the upload
/// `key`: unique per page and the same on every retry, within the length
/// a request id may have whatever the key's.
pub fn page_key(key: &str, first: usize) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let short: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("page-{short}-{first}")
}

/// Whether a failed call is worth sending again: the server or the way to
/// it failed (a restart, a proxy's 502/503), not the request (a proxy's
/// 413, a refusal).
fn retryable(status: &tonic::Status) -> bool {
    use tonic::Code::*;
    match status.code() {
        Unavailable | DeadlineExceeded | Aborted => true,
        Internal | Unknown => super::not_grpc::describe(status).is_none(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_keep_to_their_size_and_order() {
        let items: Vec<String> = (0..1000).map(|i| format!("item-{i:04}")).collect();
        // Each item: 9 bytes, a tag and a length: 11 on the wire.
        let pages = split(&items, 110);
        assert_eq!(pages.len(), 100);
        assert!(pages.iter().all(|p| p.len() == 10), "{pages:?}");
        assert_eq!(pages.first(), Some(&(0..10)));
        assert_eq!(pages.last(), Some(&(990..1000)));
        assert_eq!(split(&items, 1 << 20), vec![0..1000usize]);
        assert!(split(&[], 1024).is_empty());
        // An item bigger than a page goes alone.
        let big = vec!["a".into(), "x".repeat(300), "b".into()];
        assert_eq!(split(&big, 100), [0..1, 1..2, 2..3]);
        // At most MAX_PAGE_ITEMS per page, whatever the bytes.
        let many = vec![String::new(); MAX_PAGE_ITEMS + 1];
        assert_eq!(
            split(&many, 4 << 20),
            [0..MAX_PAGE_ITEMS, MAX_PAGE_ITEMS..MAX_PAGE_ITEMS + 1]
        );
    }

    #[test]
    fn varints_are_sized_as_protobuf_does() {
        assert_eq!(varint_len(0), 1);
        assert_eq!(varint_len(127), 1);
        assert_eq!(varint_len(128), 2);
        assert_eq!(varint_len(16_383), 2);
        assert_eq!(varint_len(16_384), 3);
    }

    #[test]
    fn page_keys_are_short_stable_and_distinct() {
        let long = "k".repeat(200);
        assert_eq!(page_key(&long, 5), page_key(&long, 5));
        assert_ne!(page_key(&long, 5), page_key(&long, 6));
        assert_ne!(page_key("a", 5), page_key("b", 5));
        assert!(page_key(&long, usize::MAX).len() <= 200);
    }
}
