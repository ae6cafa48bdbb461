//! The watch's start (failover, crash recovery): koi-mdns publishes `mdns.service.*` only when
//! an advertisement appears, changes or leaves, so a certmesh that starts under a running
//! daemon — restarted after a crash, e.g. killed in the middle of a demotion — would hear
//! nothing of the advertisements already on the link: an old primary would never see the new
//! primary's higher term (never fenced, never demoted), and a member or standby would not know
//! its primary was there. The same holds for an event missed at start (published before the
//! subscription took) or in a gap. So the `presence` service replays koi-mdns's cache of
//! `_certmesh._tcp` (`mdns/query`, a local call, no network traffic) at start and every
//! [`EVERY`] through the same checks as a live event ([`crate::presence::classify`], then the
//! watch and the fence). A removal is not replayed: the cache no longer holds it, and the
//! watch keeps what the live `removed` event said.

use std::sync::Arc;
use std::time::Duration;

use koi_mdns_api::{APPEARED, ServiceRecord};
use koi_sdk::Context;
use serde_json::{Value, json};

use crate::app::App;
use crate::files::Membership;
use crate::layout::Layout;
use crate::wire::SERVICE_TYPE;

/// How often the cache is replayed.
pub const EVERY: Duration = Duration::from_secs(10);

/// How long to wait for koi-mdns's answer.
const ANSWER_LIMIT: Duration = Duration::from_secs(10);

/// Most cached advertisements replayed.
const MAX_REPLAYED: usize = 256;

/// Replays koi-mdns's cached `_certmesh._tcp` advertisements of this mesh into the watch;
/// true once done (or when there is no mesh to watch), false when koi-mdns could not answer
/// yet (the caller tries again later).
pub async fn replay(ctx: &Context, app: &Arc<App>, layout: &Layout) -> bool {
    let Some(fingerprint) = Membership::load(layout)
        .ok()
        .flatten()
        .map(|m| m.ca_fingerprint)
    else {
        return true;
    };
    let params = json!({"service_type": SERVICE_TYPE});
    let answer: Value =
        match tokio::time::timeout(ANSWER_LIMIT, ctx.call("mdns", "query", &params)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                tracing::debug!(
                    "certmesh presence: koi-mdns's cache not read yet: {}",
                    e.message()
                );
                return false;
            }
            Err(_) => return false,
        };
    let mut replayed = 0;
    for service in answer["services"]
        .as_array()
        .into_iter()
        .flatten()
        .take(MAX_REPLAYED)
    {
        let Ok(record) = serde_json::from_value::<ServiceRecord>(service.clone()) else {
            continue;
        };
        if let Some(s) = crate::presence::classify(APPEARED, &record, None, &fingerprint) {
            app.presence.record(&s, crate::clock::now());
            crate::follow::fence_if_superseded(app, layout, &s);
            replayed += 1;
        }
    }
    tracing::debug!(
        "certmesh presence: {replayed} cached CA advertisement(s) of this mesh replayed"
    );
    true
}

#[cfg(test)]
mod tests {
    use crate::presence::{PRIMARY, Sighting, Watch};

    #[test]
    fn a_primary_never_seen_is_absent_from_the_first_look_until_it_shows() {
        let watch = Watch::default();
        let first = watch.gone_since().expect("never seen counts as gone");
        assert_eq!(
            watch.gone_since(),
            Some(first),
            "the first look stays the start"
        );
        let failed = crate::heartbeat::Heartbeat {
            ok: false,
            ..Default::default()
        };
        assert_eq!(watch.unreachable_since(Some(&failed)), Some(first));
        let ok = crate::heartbeat::Heartbeat {
            ok: true,
            ..Default::default()
        };
        assert_eq!(
            watch.unreachable_since(Some(&ok)),
            None,
            "the heartbeat answers"
        );
        let s = Sighting {
            role: PRIMARY,
            term: 1,
            present: true,
            reason: None,
            host: None,
            endpoint: None,
            key: "a".into(),
        };
        watch.record(&s, first);
        assert_eq!(watch.gone_since(), None, "seen now");
    }
}
