//! Acting on a higher term (issue 11 item 7): a member moves its renewal and heartbeat to the
//! primary with the highest confirmed term ([`follow`]); a CA that a confirmed higher term
//! supersedes stops signing at once ([`fence_if_superseded`]) and becomes a standby
//! ([`demote_if_fenced`], [`crate::demote`]).
//!
//! Who may claim a higher term ([`confirmed_term`]): the fingerprint is public in TXT, so an
//! advertisement alone is anyone's, and a TLS answer under the root is any MEMBER's (each holds
//! a leaf under it). A higher term is therefore believed only when all of these hold:
//!
//! 1. the advertisement names its host (its instance name is "koi certmesh CA on HOST") and the believer's own
//!    trusted roster lists that host as a standby ([`trusted_standbys`]: on a CA its
//!    `roster.json` — its active entries with role `standby`; on a member the
//!    roster its CA last served it over pinned mutual TLS, kept by the heartbeat);
//! 2. the advertised API answers `/v1/certmesh/health` over TLS with a chain to the pinned root
//!    and reports the higher term itself;
//! 3. the leaf that answered is that host's: one of its DNS names is the host name as the roster
//!    records it, or that name under `.local` (names are owned per roster entry, so another
//!    member cannot hold them).
//!
//! Every transition keeps a path: a promoted standby is in its primary's roster (and in the
//! roster its members fetch); a takeover's roster lists the old primary as a standby, so a later
//! takeover by that old primary (term 3) is believed by the machines that synced from the
//! second one.

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
    let candidates: Vec<crate::presence::Claim> = app
        .presence
        .primaries()
        .into_iter()
        .filter(|c| c.term > known)
        .take(4)
        .collect();
    if candidates.is_empty() {
        return;
    }
    let Some(fingerprint) = Membership::mesh_fingerprint(layout) else {
        return;
    };
    // Believed only from a standby of the roster this member trusts, whose own leaf answers
    // with the higher term under the root; the highest confirmed one wins.
    let standbys = trusted_standbys(layout);
    let mut confirmed = None;
    for claim in candidates {
        match confirmed_term(&fingerprint, &claim, &standbys).await {
            Ok(t) if t > known => {
                confirmed = Some((t, claim.endpoint));
                break;
            }
            Ok(t) => tracing::debug!(
                advertised = claim.term,
                answered = t,
                "certmesh: {} answered term {t}, not above {known}; not followed",
                claim.endpoint
            ),
            Err(why) => tracing::debug!(
                advertised = claim.term,
                "certmesh: an advertisement claims term {} at {}, but it did not confirm it: \
                 {why}; not followed",
                claim.term,
                claim.endpoint
            ),
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
/// The advertisement alone is not believed (anyone on the LAN can send one), nor a member's TLS
/// answer: the claim must pass [`confirmed_term`] against this CA's roster. One check runs at a
/// time; others are dropped until it ends.
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
    if s.term <= roster.mesh.term {
        return;
    }
    let standbys = standbys_of_roster(&roster);
    let claim = crate::presence::Claim {
        term: s.term,
        endpoint: endpoint.clone(),
        host: s.host.clone(),
    };
    // A claimant that is no standby of this roster is refused here, without a connection, so
    // it cannot hold the one check slot while a real standby's claim arrives.
    if let Err(why) = claimant_is_standby(&claim, &standbys) {
        tracing::warn!(
            advertised = s.term,
            "certmesh: an advertisement claims a higher term, but {endpoint} did not confirm it: \
             {why}; ignored"
        );
        return;
    }
    if app
        .presence
        .checking
        .swap(true, std::sync::atomic::Ordering::AcqRel)
    {
        return;
    }
    let (app, s) = (app.clone(), s.clone());
    let fingerprint = roster.mesh.ca_fingerprint.clone();
    tokio::spawn(async move {
        let answered = confirmed_term(&fingerprint, &claim, &standbys).await;
        app.presence
            .checking
            .store(false, std::sync::atomic::Ordering::Release);
        match answered {
            Ok(term) if term > roster.mesh.term => fence(&app, &s, term, roster.mesh.term),
            Ok(term) => tracing::warn!(
                advertised = s.term,
                answered = term,
                "certmesh: an advertisement claims a higher term, but {endpoint} did not confirm it \
                 (it answered term {term}); ignored"
            ),
            Err(why) => tracing::warn!(
                advertised = s.term,
                "certmesh: an advertisement claims a higher term, but {endpoint} did not confirm it: \
                 {why}; ignored"
            ),
        }
    });
}

/// How often a CA checks the present higher-term claims again.
pub const RECHECK_CLAIMS: std::time::Duration = std::time::Duration::from_secs(10);

/// On a CA, each `presence` round: the highest present claim of a higher term from a standby of
/// this roster is checked again ([`fence_if_superseded`]) at most every [`RECHECK_CLAIMS`], so a
/// check that failed once (a network error, a restart of the claimant's API) does not leave this
/// CA signing until the advertisement next changes. Claimants that are no standby are skipped
/// quietly (they were reported when their advertisement came).
pub fn recheck_claims(app: &std::sync::Arc<App>, layout: &Layout) {
    if !layout.is_ca() || app.authority().superseded_by().is_some() {
        return;
    }
    {
        let mut at = app
            .presence
            .claims_checked_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if at.is_some_and(|t| t.elapsed() < RECHECK_CLAIMS) {
            return;
        }
        *at = Some(std::time::Instant::now());
    }
    let Ok(roster) = koi_certmesh_core::Roster::load(&layout.roster()) else {
        return;
    };
    let standbys = standbys_of_roster(&roster);
    let claim = app
        .presence
        .primaries()
        .into_iter()
        .take_while(|c| c.term > roster.mesh.term)
        .find(|c| claimant_is_standby(c, &standbys).is_ok());
    if let Some(claim) = claim {
        let sighting = Sighting {
            role: PRIMARY,
            term: claim.term,
            present: true,
            reason: None,
            host: claim.host,
            endpoint: Some(claim.endpoint),
            mdns_host: String::new(),
            key: String::new(),
        };
        fence_if_superseded(app, layout, &sighting);
    }
}

/// The hosts a CA's roster lets claim a higher term: its active entries with role `standby`
/// (`mesh.standbys` is kept to the same set, [`crate::takeover::prune_standbys`]).
pub fn standbys_of_roster(roster: &koi_certmesh_core::Roster) -> Vec<String> {
    use koi_certmesh_core::roster::{MemberStatus, Role};
    roster
        .members
        .iter()
        .filter(|m| m.role == Role::Standby && m.status == MemberStatus::Active)
        .map(|m| m.hostname.clone())
        .collect()
}

/// The standbys this machine trusts to claim a higher term: a CA's roster
/// ([`standbys_of_roster`]); on a member (a standby too), those of the roster its CA last
/// served it over pinned mutual TLS ([`crate::heartbeat::Heartbeat::standbys`]). Blocking (reads
/// a small file).
pub fn trusted_standbys(layout: &Layout) -> Vec<String> {
    if layout.is_ca() {
        return koi_certmesh_core::Roster::load(&layout.roster())
            .map(|r| standbys_of_roster(&r))
            .unwrap_or_default();
    }
    crate::heartbeat::last(layout)
        .map(|h| h.standbys)
        .unwrap_or_default()
}

/// Whether a leaf's DNS names include `host` (or `host.local`), case-insensitively.
pub fn leaf_names_host(leaf_der: &[u8], host: &str) -> bool {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let Ok((_, cert)) = X509Certificate::from_der(leaf_der) else {
        return false;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    let local = format!("{host}.local");
    san.value.general_names.iter().any(|n| match n {
        GeneralName::DNSName(d) => {
            let d = d.trim_end_matches('.');
            d.eq_ignore_ascii_case(host) || d.eq_ignore_ascii_case(&local)
        }
        _ => false,
    })
}

/// The claimant's host, if the advertisement names one that `standbys` lists; else why not.
pub fn claimant_is_standby<'a>(
    claim: &'a crate::presence::Claim,
    standbys: &[String],
) -> Result<&'a str, String> {
    let host = claim.host.as_deref().ok_or(
        "the advertisement names no host (its instance name should be \"koi certmesh CA on HOST\")",
    )?;
    if !standbys.iter().any(|s| s.eq_ignore_ascii_case(host)) {
        return Err(format!(
            "{host} is not a standby CA in this machine's roster (standbys: {})",
            if standbys.is_empty() {
                "none".to_owned()
            } else {
                standbys.join(", ")
            }
        ));
    }
    Ok(host)
}

/// The term `claim` proves, or why it proves none: its host must be one of `standbys` (the
/// believer's trusted roster), its API must answer under the pinned root `fingerprint`, and the
/// leaf that answered must name that host ([`leaf_names_host`]).
pub async fn confirmed_term(
    fingerprint: &str,
    claim: &crate::presence::Claim,
    standbys: &[String],
) -> Result<u64, String> {
    let host = claimant_is_standby(claim, standbys)?;
    let pin = crate::tls::CaPin::new(Some(fingerprint.to_owned()));
    let term = answered_term(&pin, &claim.endpoint)
        .await
        .ok_or("its API did not answer over TLS under this mesh's root")?;
    let leaf = pin.verified_leaf().ok_or("no certificate seen")?;
    if !leaf_names_host(leaf.as_ref(), host) {
        return Err(format!(
            "the certificate that answered is not {host}'s (none of its names is {host})"
        ));
    }
    Ok(term)
}

/// The term the CA API at `endpoint` reports, if it answers over TLS with a chain to the root
/// `fingerprint` (pinned).
pub async fn answered_term(pin: &std::sync::Arc<crate::tls::CaPin>, endpoint: &str) -> Option<u64> {
    let ep = crate::client::CaEndpoint::parse(endpoint).ok()?;
    let answer = crate::client::request::<(), crate::wire::HealthResponse>(
        &ep,
        pin,
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
            // Done: a later takeover by this machine must not demote it again.
            app.superseded_by
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            app.demoted.notify_one();
        }
        Err(e) => tracing::warn!("certmesh: demotion failed (still fenced): {}", e.message()),
    }
}
