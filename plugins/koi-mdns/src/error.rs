//! `MdnsError`: every way a koi-mdns method can fail, each variant naming the thing, the cause and
//! (through [`MdnsError::hint`]) the next step. Handlers turn it into the SDK's `MethodError`.

use koi_sdk::MethodError;
use koi_sdk::protocol::codes;

/// A koi-mdns failure. The `Display` text names the thing and the cause; [`MdnsError::hint`]
/// says what to do next.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MdnsError {
    /// The service type is not `_name._tcp` / `_name._udp`.
    #[error("`{given}` is not a valid DNS-SD service type: {reason}")]
    InvalidServiceType {
        /// What the user typed.
        given: String,
        /// Why it is invalid.
        reason: String,
    },
    /// Port 0 cannot be announced.
    #[error("port 0 cannot be announced: clients would have nowhere to connect")]
    PortZero,
    /// A TXT entry is over the 255-byte limit of one TXT string.
    #[error(
        "the TXT entry `{key}=…` is {len} bytes; a DNS-SD TXT entry (key=value) holds at most 255 bytes"
    )]
    TxtEntryTooLong {
        /// The entry's key.
        key: String,
        /// Its length in bytes, `key=value` included.
        len: usize,
    },
    /// A TXT entry is not `key=value` or has a bad key.
    #[error("the TXT entry `{entry}` is invalid: {reason}")]
    TxtMalformed {
        /// The entry as given.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The instance name is empty.
    #[error("the instance name is empty")]
    InstanceNameEmpty,
    /// The instance name is over one DNS label (63 bytes).
    #[error(
        "the instance name `{name}` is {len} bytes; an instance name is one DNS label of at most 63 bytes"
    )]
    InstanceNameTooLong {
        /// The name.
        name: String,
        /// Its length in bytes (UTF-8).
        len: usize,
    },
    /// The instance name holds characters a DNS label cannot carry well.
    #[error("the instance name `{name}` is invalid: {reason}")]
    InstanceNameInvalid {
        /// The name (escaped).
        name: String,
        /// Why.
        reason: String,
    },
    /// The host name is not a usable `.local` host name.
    #[error("`{given}` is not a usable mDNS host name: {reason}")]
    InvalidHostName {
        /// What the user typed.
        given: String,
        /// Why it is invalid.
        reason: String,
    },
    /// An `--ip` value is not an IP address.
    #[error("`{given}` is not an IP address")]
    InvalidAddress {
        /// What the user typed.
        given: String,
    },
    /// Another responder already uses the instance name; mdns-sd picked a new one.
    #[error(
        "another host already announces `{requested}` ({service_type}); announcing as `{renamed}` instead"
    )]
    NameConflict {
        /// The name asked for.
        requested: String,
        /// The name actually announced.
        renamed: String,
        /// The service type.
        service_type: String,
    },
    /// No interface passes the selection rule (or the `--interface` list).
    #[error("no usable network interface for mDNS: {detail}")]
    NoUsableInterface {
        /// What was found and why each was skipped.
        detail: String,
    },
    /// `--interface` names an interface that does not exist or cannot carry mDNS.
    #[error("the interface `{name}` cannot be used for mDNS: {reason} (usable here: {usable})")]
    UnusableInterface {
        /// The interface named.
        name: String,
        /// Why it cannot be used.
        reason: String,
        /// The interfaces that could be used instead.
        usable: String,
    },
    /// UDP port 5353 is bound by a stack that does not share it.
    #[error(
        "UDP port 5353 ({family}) is held by another mDNS stack that does not share it: {cause}"
    )]
    PortHeld {
        /// `IPv4` or `IPv6`.
        family: &'static str,
        /// The OS error.
        cause: String,
    },
    /// The mdns-sd engine failed.
    #[error("the mDNS engine failed: {cause}")]
    Engine {
        /// What it said.
        cause: String,
    },
    /// This process already announces that name and type.
    #[error("`{name}` ({service_type}) is already announced by this koi, for {owner}")]
    AlreadyAnnounced {
        /// The instance name.
        name: String,
        /// The service type.
        service_type: String,
        /// Who owns the announcement (`plugin koi-certmesh`, `the koi CLI (uid 1000)`).
        owner: String,
    },
    /// `unannounce`/`withdraw` by someone other than the announcement's owner.
    #[error("`{name}` ({service_type}) was announced by {owner}; {caller} cannot withdraw it")]
    NotOwner {
        /// The instance name.
        name: String,
        /// The service type.
        service_type: String,
        /// Who owns it.
        owner: String,
        /// Who asked.
        caller: String,
    },
    /// `unannounce`/`withdraw` of something this process does not hold.
    #[error("this koi-mdns holds no announcement of `{name}` ({service_type})")]
    NotAnnounced {
        /// The instance name.
        name: String,
        /// The service type.
        service_type: String,
    },
    /// `resolve` got no answer.
    #[error("no host answered for `{host}` within {seconds} s")]
    NotResolved {
        /// The host name asked for.
        host: String,
        /// How long we waited.
        seconds: f64,
    },
    /// A timeout outside the allowed range.
    #[error("the timeout {seconds} s is out of range (0.1 to 3600 seconds)")]
    BadTimeout {
        /// What was asked for.
        seconds: f64,
    },
}

impl MdnsError {
    /// The next step for the user.
    pub fn hint(&self) -> String {
        match self {
            Self::InvalidServiceType { .. } => "Write it as `_name._tcp` or `_name._udp`, where name is 1–15 letters, digits or \
                 hyphens with at least one letter (for example `_http._tcp`); `.local` may follow."
                .into(),
            Self::PortZero => "Pass the port your service listens on, e.g. `koi mdns announce web _http._tcp 8080`.".into(),
            Self::TxtEntryTooLong { .. } => "Shorten the value, or split it across several keys \
                 (`--txt part1=… --txt part2=…`)."
                .into(),
            Self::TxtMalformed { .. } => "Write each entry as `--txt key=value` (or `--txt flag` for a boolean); keys are \
                 printable ASCII without `=`, unique, case-insensitively."
                .into(),
            Self::InstanceNameEmpty => "Pass a name people will recognise, e.g. `koi mdns announce \"Grafana\" _http._tcp 3000`.".into(),
            Self::InstanceNameTooLong { .. } => "Choose a shorter instance name (at most 63 bytes; accented letters take 2 bytes).".into(),
            Self::InstanceNameInvalid { .. } => "Use printable characters only, e.g. `koi mdns announce \"Living room TV\" _http._tcp 80`.".into(),
            Self::InvalidHostName { .. } => "Pass a host name such as `nas` or `nas.local` (letters, digits, hyphens).".into(),
            Self::InvalidAddress { .. } => "Pass an IPv4 or IPv6 address, e.g. `--ip 10.0.0.5`; omit `--ip` to use the interfaces' own addresses.".into(),
            Self::NameConflict { .. } => "Pick a name nobody else uses (e.g. add the host name), or stop the other \
                 announcement; `koi mdns discover` shows who holds it."
                .into(),
            Self::NoUsableInterface { .. } => "Bring up a multicast-capable interface (see `ip -br link`), or name one \
                 explicitly with `--interface IF`; loopback, VPN/tunnel links and container \
                 bridges are skipped unless named."
                .into(),
            Self::UnusableInterface { .. } => "Name an interface that is up, multicast-capable and has an address \
                 (`ip -br addr`), or leave out `--interface` to use the default set."
                .into(),
            Self::PortHeld { .. } => "Find the holder with `ss -ulpn 'sport = :5353'` and stop it, or configure it to share \
                 the port (SO_REUSEADDR, as Avahi and mDNSResponder do)."
                .into(),
            Self::Engine { .. } => "Run again with `-vv` to see the engine's log; if it persists, report it.".into(),
            Self::AlreadyAnnounced { .. } => "Pick another name, or, if you announced it, withdraw it first with \
                 `koi mdns unannounce NAME TYPE`; `koi mdns state` shows each announcement's owner."
                .into(),
            Self::NotOwner { .. } => "Only the owner can withdraw an announcement; `koi mdns state` lists each one \
                 with its owner, and every announcement is withdrawn when `koi daemon` stops."
                .into(),
            Self::NotAnnounced { .. } => "`koi mdns status` lists what this koi announces. A one-shot `koi mdns announce` \
                 is withdrawn by pressing Ctrl-C in its terminal."
                .into(),
            Self::NotResolved { .. } => "Check the name (`koi mdns discover` shows host names) and that the host is \
                 on this link; try a longer `--timeout`."
                .into(),
            Self::BadTimeout { .. } => "Pass `--timeout` in seconds, e.g. `--timeout 3`.".into(),
        }
    }

    /// Whether the error is the caller's input (exit status 2) rather than a runtime failure.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Self::InvalidServiceType { .. }
                | Self::PortZero
                | Self::TxtEntryTooLong { .. }
                | Self::TxtMalformed { .. }
                | Self::InstanceNameEmpty
                | Self::InstanceNameTooLong { .. }
                | Self::InstanceNameInvalid { .. }
                | Self::InvalidHostName { .. }
                | Self::InvalidAddress { .. }
                | Self::BadTimeout { .. }
        )
    }
}

impl From<MdnsError> for MethodError {
    fn from(e: MdnsError) -> Self {
        let hint = e.hint();
        let base = if e.is_usage() {
            MethodError::with_code(codes::INVALID_PARAMS, e.to_string())
        } else {
            MethodError::new(e.to_string())
        };
        base.hint(hint)
    }
}

impl From<mdns_sd::Error> for MdnsError {
    fn from(e: mdns_sd::Error) -> Self {
        Self::Engine {
            cause: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_errors_map_to_invalid_params_with_a_hint() {
        let e: MethodError = MdnsError::PortZero.into();
        assert_eq!(e.code(), codes::INVALID_PARAMS);
        let wire = e.into_error_object();
        assert!(wire.hint().is_some_and(|h| h.contains("8080")));
    }

    #[test]
    fn runtime_errors_are_method_failures() {
        let e: MethodError = MdnsError::PortHeld {
            family: "IPv4",
            cause: "Address in use".into(),
        }
        .into();
        assert_eq!(e.code(), codes::METHOD_FAILED);
        assert!(e.message().contains("5353"));
    }
}
