//! What a publish requires of the providers ([`Strategy`]), and the one pure judgement of
//! whether the providers' health satisfies it ([`strategy_satisfied`]), which readiness, the
//! relay's health and the operator's conditions all share.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::CompositeError;

/// What a publish requires of the providers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Strategy {
    /// Every provider must acknowledge; the first failure fails the publish.
    #[default]
    FailFast,
    /// At least one provider must acknowledge; failures are logged and counted.
    BestEffort,
}

impl Strategy {
    /// The spelling used by `COMPOSITE_STRATEGY` and logs.
    pub fn as_kebab(self) -> &'static str {
        match self {
            Strategy::FailFast => "fail-fast",
            Strategy::BestEffort => "best-effort",
        }
    }

    pub(super) fn to_u8(self) -> u8 {
        match self {
            Strategy::FailFast => 0,
            Strategy::BestEffort => 1,
        }
    }

    pub(super) fn from_u8(v: u8) -> Self {
        if v == 1 {
            Strategy::BestEffort
        } else {
            Strategy::FailFast
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Strategy::FailFast => "FailFast",
            Strategy::BestEffort => "BestEffort",
        })
    }
}

impl FromStr for Strategy {
    type Err = CompositeError;

    /// Accepts the seed's `fail-fast` / `best-effort` and the resource's `FailFast` / `BestEffort`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s
            .trim()
            .to_ascii_lowercase()
            .replace(['-', '_'], "")
            .as_str()
        {
            "failfast" => Ok(Strategy::FailFast),
            "besteffort" => Ok(Strategy::BestEffort),
            _ => Err(CompositeError::UnknownStrategy {
                given: s.to_string(),
            }),
        }
    }
}

/// What BestEffort needs before a publish is accepted (FailFast always needs every provider's
/// acknowledgement, so this does not apply to it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Acceptance {
    /// At least one broker acknowledged the message. A message no broker acknowledged is
    /// refused, and nothing of it is kept in a backlog (it cannot appear later).
    #[default]
    BrokerAck,
    /// The relay's disk is enough, as Cassandra's consistency level ANY: a message no broker
    /// acknowledged is accepted once the hinted-handoff backlogs hold it, to be replayed later.
    RelayDisk,
}

impl Acceptance {
    pub(super) fn to_u8(self) -> u8 {
        match self {
            Acceptance::BrokerAck => 0,
            Acceptance::RelayDisk => 1,
        }
    }

    pub(super) fn from_u8(v: u8) -> Self {
        if v == 1 {
            Acceptance::RelayDisk
        } else {
            Acceptance::BrokerAck
        }
    }
}

impl fmt::Display for Acceptance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Acceptance::BrokerAck => "BrokerAck",
            Acceptance::RelayDisk => "RelayDisk",
        })
    }
}

/// Whether the providers' health satisfies the strategy: FailFast needs every provider healthy,
/// BestEffort at least one.
pub fn strategy_satisfied(strategy: Strategy, healthy: &[bool]) -> bool {
    match strategy {
        Strategy::FailFast => !healthy.is_empty() && healthy.iter().all(|h| *h),
        Strategy::BestEffort => healthy.iter().any(|h| *h),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategy_parsing() {
        for (text, want) in [
            ("fail-fast", Strategy::FailFast),
            ("FailFast", Strategy::FailFast),
            ("best-effort", Strategy::BestEffort),
            ("BEST_EFFORT", Strategy::BestEffort),
        ] {
            assert_eq!(text.parse::<Strategy>().unwrap(), want, "{text}");
        }
        let err = "sometimes".parse::<Strategy>().unwrap_err().to_string();
        assert!(
            err.contains("fail-fast") && err.contains("best-effort"),
            "{err}"
        );
    }

    #[test]
    fn strategy_satisfaction_table() {
        use Strategy::*;
        for (strategy, healthy, want) in [
            (FailFast, &[true, true][..], true),
            (FailFast, &[true, false][..], false),
            (FailFast, &[][..], false),
            (BestEffort, &[true, false][..], true),
            (BestEffort, &[false, false][..], false),
            (BestEffort, &[][..], false),
        ] {
            assert_eq!(
                strategy_satisfied(strategy, healthy),
                want,
                "{strategy} {healthy:?}"
            );
        }
    }
}
