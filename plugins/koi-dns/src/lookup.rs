//! `koi dns lookup NAME [--type A|AAAA|SRV|TXT|PTR|ANY]`: with a server running (under `koi
//! daemon` in this process, or a foreground `koi dns serve` noted in `running.json`), a real UDP
//! query to its first listener; without one, an in-process resolution from the table. Either way
//! the answer says which source produced it (read from this process's table, which the same
//! files and events feed).

use crate::entries::refresh_if_one_shot;
use crate::state::Dns;
use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{Name, Record, RecordType};
use koi_sdk::{Context, MethodError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// Record types `lookup` asks for.
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema)]
pub enum QType {
    /// IPv4 addresses.
    #[default]
    A,
    /// IPv6 addresses.
    AAAA,
    /// Service location.
    SRV,
    /// Text.
    TXT,
    /// Reverse name.
    PTR,
    /// Everything the table has.
    ANY,
}

impl From<QType> for RecordType {
    fn from(t: QType) -> Self {
        match t {
            QType::A => Self::A,
            QType::AAAA => Self::AAAA,
            QType::SRV => Self::SRV,
            QType::TXT => Self::TXT,
            QType::PTR => Self::PTR,
            QType::ANY => Self::ANY,
        }
    }
}

/// Params of `lookup`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LookupParams {
    /// The name (`grafana.lan`; for PTR an address works too).
    pub name: String,
    /// Record type (default A).
    #[serde(default, rename = "type")]
    pub qtype: QType,
}

/// One record.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RecordOut {
    /// Owner name.
    pub name: String,
    /// Type.
    #[serde(rename = "type")]
    pub rtype: String,
    /// TTL.
    pub ttl: u32,
    /// Data.
    pub data: String,
}

/// Result of `lookup`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct LookupResult {
    /// The name asked.
    pub name: String,
    /// Response code (`NOERROR`, `NXDOMAIN`, …).
    pub rcode: String,
    /// Answer records.
    pub answers: Vec<RecordOut>,
    /// Which source produced the answer (`static`, `certmesh`, `mdns`), `upstream` for a
    /// forwarded name, or `none`.
    pub source: String,
    /// `udp ADDR` (a real query to the running server) or `in-process`.
    pub via: String,
}

fn out(r: &Record) -> RecordOut {
    RecordOut {
        name: r.name.to_ascii().trim_end_matches('.').to_owned(),
        rtype: r.record_type().to_string(),
        ttl: r.ttl,
        data: r.data.to_string(),
    }
}

/// `lookup`.
pub async fn lookup(ctx: Context, p: LookupParams) -> Result<LookupResult, MethodError> {
    let dns = ctx.state::<Dns>()?;
    let text = p.name.trim().trim_end_matches('.');
    let name = match text.parse::<IpAddr>() {
        Ok(ip) => Name::from(ip),
        Err(_) => Name::from_ascii(format!("{text}.")).map_err(|e| {
            MethodError::invalid_params(format!(
                "`{}` is not a DNS name ({e}): write e.g. grafana.lan",
                text.chars().take(80).collect::<String>()
            ))
        })?,
    };
    let qtype = if text.parse::<IpAddr>().is_ok() {
        RecordType::PTR
    } else {
        p.qtype.into()
    };
    let query = Query::query(name.clone(), qtype);
    let target = {
        let server = dns.server.lock().await;
        server
            .as_ref()
            .and_then(|r| r.config.listen.first().copied())
    };
    // A foreground `koi dns serve` in another process counts as a running server too.
    let target = target
        .or_else(|| crate::verbs::foreground(&dns).and_then(|f| f.listeners.first().copied()));
    if target.is_none() {
        refresh_if_one_shot(&ctx, &dns).await;
    }
    let snap = dns.shared.snapshot.load();
    let local = snap.answer(&query, 0);
    let source = match &local {
        Some(a) => a.source.map_or("none", |s| s.as_str()).to_owned(),
        None => "upstream".to_owned(),
    };
    let Some(mut addr) = target else {
        let (rcode, answers) = match local {
            Some(a) => (
                if a.nxdomain { "NXDOMAIN" } else { "NOERROR" },
                a.answers.iter().map(out).collect(),
            ),
            None => ("NOTLOCAL", Vec::new()),
        };
        return Ok(LookupResult {
            name: text.to_owned(),
            rcode: rcode.into(),
            answers,
            source,
            via: "in-process".into(),
        });
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        });
    }
    let reply = ask(addr, query).await.map_err(|e| {
        MethodError::new(format!(
            "the DNS server on {addr} did not answer: {e}; `koi dns status` shows whether it runs"
        ))
    })?;
    Ok(LookupResult {
        name: text.to_owned(),
        rcode: reply.metadata.response_code.to_string(),
        answers: reply.answers.iter().map(out).collect(),
        source,
        via: format!("udp {addr}"),
    })
}

async fn ask(addr: SocketAddr, query: Query) -> Result<Message, String> {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(query);
    let mut edns = Edns::new();
    edns.set_max_payload(crate::wire::EDNS_PAYLOAD);
    m.set_edns(edns);
    let bytes = m.to_vec().map_err(|e| e.to_string())?;
    let bind: SocketAddr = if addr.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
    };
    let sock = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| e.to_string())?;
    sock.connect(addr).await.map_err(|e| e.to_string())?;
    sock.send(&bytes).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 65535];
    let n = tokio::time::timeout(Duration::from_secs(3), sock.recv(&mut buf))
        .await
        .map_err(|_| "no reply within 3 s".to_owned())?
        .map_err(|e| e.to_string())?;
    let reply = Message::from_vec(&buf[..n]).map_err(|e| e.to_string())?;
    if reply.metadata.id != m.metadata.id {
        return Err("a reply with the wrong ID".into());
    }
    Ok(reply)
}
