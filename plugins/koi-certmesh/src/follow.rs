//! Acting on a higher term (issue 11 item 7): a member moves its renewal and heartbeat to the
//! primary with the highest confirmed term ([`follow`]); a CA that a confirmed higher term
//! supersedes stops signing at once ([`fence_if_superseded`]) and becomes a standby
//! ([`demote_if_fenced`], [`crate::demote`]). An advertised term is believed only when the
//! advertised API answers over TLS under this mesh's pinned root with that term itself
//! ([`answered_term`]): the fingerprint is public in TXT, so an advertisement alone is anyone's.

use koi_sdk::{Context, MethodError};

use crate::app::App;
use crate::files::Membership;
use crate::layout::Layout;
use crate::presence::{PRIMARY, Sighting};

/// On a member: when mDNS shows a primary of this mesh with a term above the one this member
/// knows (its last heartbeat's), renewal and heartbeat move to it (`membership.json`'s
/// `ca_endpoint`). The root is the same, so the pin holds; a beat right after checks the new
/// CA's chain and records its term.
pub async fn follow(ctx: &Context, app: &std::sync::Arc<App>, layout: &Layout) {
    let known = crate::heartbeat::last(layout)
        .and_then(|h| h.term)
        .unwrap_or(FIRST_TERM);
    let candidates: Vec<(u64, String)> = app
        .presence
        .primaries()
        .into_iter()
        .filter(|(t, _)| *t > known)
        .take(4)
        .collect();
    if candidates.is_empty() {
        return;
    }
    let Some(fingerprint) = Membership::load(layout)
        .ok()
        .flatten()
        .map(|m| m.ca_fingerprint)
    else {
        return;
    };
    // Believed only when the advertised API itself answers with a higher term under the root
    // (an advertisement alone is anyone's to send); the highest confirmed one wins.
    let mut confirmed = None;
    for (_, endpoint) in candidates {
        if let Some(t) = answered_term(&fingerprint, &endpoint).await
            && t > known
        {
            confirmed = Some((t, endpoint));
            break;
        }
    }
    let Some((term, endpoint)) = confirmed else {
        return;
    };
    let authority = app.authority();
    let outcome = ctx
        .blocking("certmesh follow the primary", move || {
            let _writer = authority.writer_for_command()?;
            let layout = authority.layout();
            let Some(mut m) = Membership::load(layout)? else {
                return Ok(None);
            };
            if m.role != "member" || m.ca_endpoint.as_deref() == Some(endpoint.as_str()) {
                return Ok(None);
            }
            let old = m.ca_endpoint.replace(endpoint.clone());
            m.save_in(&layout.dir())?;
            Ok(Some((old, endpoint)))
        })
        .await;
    match outcome {
        Ok(Some((old, new))) => {
            tracing::warn!(
                term,
                "certmesh: following the primary with term {term} at {new} (was {})",
                old.unwrap_or_default()
            );
            let _ = crate::heartbeat::probe(ctx, layout).await;
        }
        Ok(None) => {}
        Err(e) => tracing::info!(
            "certmesh: cannot follow the new primary yet: {}",
            e.message()
        ),
    }
}

/// The term of a mesh's first CA (`koi_certmesh_core::roster::first_term`).
pub const FIRST_TERM: u64 = 1;

/// On a CA: a present primary of this mesh with a higher term than this CA's own means a
/// standby took over; this CA stops signing NOW (before anything else), and the `presence`
/// service demotes it ([`crate::demote`]).
///
/// The advertisement alone is not believed (anyone on the LAN can send one): the advertised API
/// must answer `/v1/certmesh/health` over TLS with a chain to this mesh's pinned root and report
/// the higher term itself. One check runs at a time; others are dropped until it ends.
pub fn fence_if_superseded(app: &std::sync::Arc<App>, layout: &Layout, s: &Sighting) {
    if s.role != PRIMARY || !s.present || !layout.is_ca() {
        return;
    }
    let Ok(roster) = koi_certmesh_core::Roster::load(&layout.roster()) else {
        return;
    };
    let Some(endpoint) = s.endpoint.clone() else {
        return;
    };
    if s.term <= roster.mesh.term
        || app
            .presence
            .checking
            .swap(true, std::sync::atomic::Ordering::AcqRel)
    {
        return;
    }
    let (app, s) = (app.clone(), s.clone());
    let fingerprint = roster.mesh.ca_fingerprint.clone();
    tokio::spawn(async move {
        let answered = answered_term(&fingerprint, &endpoint).await;
        app.presence
            .checking
            .store(false, std::sync::atomic::Ordering::Release);
        match answered {
            Some(term) if term > roster.mesh.term => fence(&app, &s, term, roster.mesh.term),
            other => tracing::warn!(
                advertised = s.term,
                answered = ?other,
                "certmesh: an advertisement claims a higher term, but {endpoint} did not confirm it \
                 over TLS under this mesh's root; ignored"
            ),
        }
    });
}

/// The term the CA API at `endpoint` reports, if it answers over TLS with a chain to the root
/// `fingerprint` (pinned).
pub async fn answered_term(fingerprint: &str, endpoint: &str) -> Option<u64> {
    let ep = crate::client::CaEndpoint::parse(endpoint).ok()?;
    let pin = crate::tls::CaPin::new(Some(fingerprint.to_owned()));
    let answer = crate::client::request::<(), crate::wire::HealthResponse>(
        &ep,
        &pin,
        None,
        hyper::Method::GET,
        "/v1/certmesh/health",
        None,
    )
    .await
    .ok()?;
    match answer {
        crate::client::Answer::Ok(h) => Some(h.mesh.term),
        crate::client::Answer::Refused { .. } => None,
    }
}

/// Stops this CA signing (a confirmed higher `term`; `own` is this CA's) and records whom to
/// demote to.
fn fence(app: &std::sync::Arc<App>, s: &Sighting, term: u64, own: u64) {
    let authority = app.authority();
    if authority.superseded_by().is_none() {
        tracing::warn!(
            term,
            own,
            "certmesh: a primary with a higher term is on the network; this CA stops signing and becomes a standby"
        );
    }
    authority.fence(term);
    *app.superseded_by
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((
        term,
        s.host.clone().unwrap_or_default(),
        s.endpoint.clone().unwrap_or_default(),
    ));
}

/// On a fenced CA: moves its files aside and makes it a standby, then stops its API.
pub async fn demote_if_fenced(ctx: &Context, app: &std::sync::Arc<App>) {
    let Some((term, primary, endpoint)) = app
        .superseded_by
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
    else {
        return;
    };
    if endpoint.is_empty() {
        return;
    }
    let authority = app.authority();
    let (p, e) = (primary.clone(), endpoint.clone());
    let outcome = ctx
        .blocking("certmesh demotion", move || {
            crate::demote::demote(&authority, term, &p, &e).map_err(MethodError::new)
        })
        .await;
    match outcome {
        Ok(()) => {
            tracing::warn!(
                term,
                "certmesh: this machine is now a STANDBY of {primary} at {endpoint} (term {term})"
            );
            app.demoted.notify_one();
        }
        Err(e) => tracing::warn!("certmesh: demotion failed (still fenced): {}", e.message()),
    }
}
