//! The CA's renewal worker: one thread that serves every `POST /v1/certmesh/renew`, committing
//! the renewals that arrived together as one batch ([`Authority::renew_batch`]: each audit entry
//! appended and fsynced, then ONE roster save for the batch, then the answers).
//!
//! Why (measured, docs/benchmarks.md "certmesh: 500 members renewing within a minute"): with 500
//! members each renewal loaded the whole roster (≈ 260 KB of JSON) and saved it again (write,
//! fsync, rename, directory fsync) under the CA's session lock, on whichever blocking-pool
//! thread it landed. Renewals that arrive while one is being written now wait for the next batch
//! instead of each rewriting the roster, and the roster's parse and serialisation buffers are
//! allocated on one thread instead of on each of the blocking pool's threads (each of which kept
//! its own malloc arena full of them: the CA's peak RSS was 67 MB in a burst of 500).
//!
//! Bounds: the queue holds at most [`MAX_QUEUED`] renewals (the API serves at most
//! [`crate::api::MAX_CONNECTIONS`] connections, one request in flight each), a batch at most
//! [`MAX_BATCH`]. When the queue is full or the thread could not start, the caller renews alone
//! on the blocking pool, as before ([`submit`] hands the job back). The thread holds only a weak
//! reference to the [`Authority`] and ends when the authority (and so the queue) is dropped.

use std::net::IpAddr;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, Weak};

use rustls::pki_types::CertificateDer;
use tokio::sync::oneshot;

use crate::authority::Authority;
use crate::error::Refusal;
use crate::renew_api::RenewRequest;
use crate::wire::JoinResponse;

/// Renewals waiting for the worker, at most.
pub const MAX_QUEUED: usize = crate::api::MAX_CONNECTIONS;
/// Renewals committed together, at most.
pub const MAX_BATCH: usize = 64;

/// One renewal's outcome.
pub type Outcome = Result<JoinResponse, Refusal>;

/// One renewal waiting for the worker.
#[derive(Debug)]
pub struct Job {
    /// The member's request.
    pub request: RenewRequest,
    /// Where it came from.
    pub peer: IpAddr,
    /// The TLS client certificate it presented.
    pub client_cert: Option<Arc<CertificateDer<'static>>>,
    reply: oneshot::Sender<Outcome>,
}

/// The authority's handle on its renewal worker (started at the first renewal).
#[derive(Debug, Default)]
pub struct RenewQueue {
    tx: Mutex<Option<SyncSender<Job>>>,
}

/// Queues one renewal for `authority`'s worker (starting it if needed) and returns where its
/// outcome arrives; hands the job back when the queue is full or no worker could start.
pub fn submit(
    authority: &Arc<Authority>,
    request: RenewRequest,
    peer: IpAddr,
    client_cert: Option<Arc<CertificateDer<'static>>>,
) -> Result<oneshot::Receiver<Outcome>, Box<Job>> {
    let (reply, answer) = oneshot::channel();
    let job = Job {
        request,
        peer,
        client_cert,
        reply,
    };
    let queue = authority.renewals();
    let mut tx = queue
        .tx
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if tx.is_none() {
        *tx = start(Arc::downgrade(authority));
    }
    let Some(sender) = tx.as_ref() else {
        return Err(Box::new(job));
    };
    match sender.try_send(job) {
        Ok(()) => Ok(answer),
        Err(TrySendError::Full(job)) => Err(Box::new(job)),
        Err(TrySendError::Disconnected(job)) => {
            *tx = None;
            Err(Box::new(job))
        }
    }
}

fn start(authority: Weak<Authority>) -> Option<SyncSender<Job>> {
    let (tx, rx) = std::sync::mpsc::sync_channel(MAX_QUEUED);
    match std::thread::Builder::new()
        .name("certmesh-renewals".into())
        .spawn(move || worker(&rx, &authority))
    {
        Ok(_) => Some(tx),
        Err(e) => {
            tracing::warn!(
                "could not start the certmesh renewal worker ({e}); renewals run one at a time"
            );
            None
        }
    }
}

fn worker(rx: &Receiver<Job>, authority: &Weak<Authority>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        // The authority is gone (the plugin is stopping): the dropped replies say so.
        let Some(authority) = authority.upgrade() else {
            return;
        };
        let outcomes = authority.renew_batch(
            &jobs
                .iter()
                .map(|j| {
                    (
                        &j.request,
                        j.peer,
                        j.client_cert.as_deref().map(|c| c.as_ref()),
                    )
                })
                .collect::<Vec<_>>(),
        );
        drop(authority);
        for (job, outcome) in jobs.into_iter().zip(outcomes) {
            // The member may have hung up; its renewal is committed either way and its next
            // attempt renews from the certificate this one replaced (`previous_fingerprint`).
            let _ = job.reply.send(outcome);
        }
    }
}

#[cfg(test)]
#[path = "renew_batch_tests.rs"]
mod tests;
