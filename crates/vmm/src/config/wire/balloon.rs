//! The balloon's wire types (`PUT`/`PATCH /balloon`, its statistics and hinting commands) and
//! [`BalloonError`], why a balloon request was refused.

use serde::{Deserialize, Serialize};

/// `PUT /balloon` (and `balloon` of a config file); `GET /balloon` answers it with the
/// current target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonConfig {
    pub amount_mib: u32,
    pub deflate_on_oom: bool,
    #[serde(default)]
    pub stats_polling_interval_s: u16,
    #[serde(default)]
    pub free_page_hinting: bool,
    #[serde(default)]
    pub free_page_reporting: bool,
}

/// `PATCH /balloon`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonUpdate {
    pub amount_mib: u32,
}

/// `PATCH /balloon/statistics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonStatsUpdate {
    pub stats_polling_interval_s: u16,
}

/// `PATCH /balloon/hinting/start` (the body is optional).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonStartCmd {
    #[serde(default)]
    pub acknowledge_on_stop: bool,
}

/// Why a balloon request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BalloonError {
    #[error("No balloon device is configured: PUT /balloon before InstanceStart.")]
    NotConfigured,
    #[error(
        "The balloon target ({amount_mib} MiB) is larger than the guest's memory ({mem_mib} MiB)."
    )]
    TooLarge { amount_mib: u32, mem_mib: u64 },
    #[error("Balloon statistics are not enabled: PUT /balloon with stats_polling_interval_s > 0 before InstanceStart.")]
    StatsNotEnabled,
    #[error("Balloon statistics cannot be turned on or off after boot: use a non-zero stats_polling_interval_s.")]
    StatsOnOff,
    #[error("Free page hinting is not enabled: PUT /balloon with \"free_page_hinting\": true before InstanceStart.")]
    HintingNotEnabled,
    #[error(
        "The balloon device is not running yet: this request is answered after InstanceStart."
    )]
    NotStarted,
}
