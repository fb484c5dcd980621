//! `limits.toml`: per-partner rates and bursts, per mode if wanted, and
//! time-of-day windows in the operator's time zone.

use crate::{ConfigError, Limit, PartnerLimits, Rate, Window};
use chrono::{FixedOffset, NaiveTime};
use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

/// The whole file, compiled.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// The operator's time zone, as a UTC offset (e.g. `+08:00`).
    pub offset: FixedOffset,
    pub default: PartnerLimits,
    pub partners: BTreeMap<String, PartnerLimits>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    /// `timezone`, its name before the keys were made one, is still read.
    #[serde(alias = "timezone")]
    time_zone: Option<Spanned<String>>,
    default: Option<PartnerConfig>,
    #[serde(default)]
    partner: BTreeMap<String, PartnerConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartnerConfig {
    rate: Spanned<String>,
    burst: Spanned<u32>,
    publish: Option<LimitConfig>,
    query: Option<LimitConfig>,
    #[serde(default)]
    schedule: Vec<WindowConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitConfig {
    rate: Spanned<String>,
    burst: Spanned<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowConfig {
    window: Spanned<String>,
    rate: Spanned<String>,
    burst: Spanned<u32>,
}

/// Compile `limits.toml`; `partners` are the known partner ids.
pub fn parse_config(
    file: &str,
    text: &str,
    partners: &[&str],
) -> Result<LimitsConfig, ConfigError> {
    let source = crossgate_config::Source::new(file, text);
    let err = |span: std::ops::Range<usize>, message: String| source.error(span, message);
    let parsed: File = source.parse()?;
    let offset = match &parsed.time_zone {
        None => FixedOffset::east_opt(0).ok_or_else(|| err(0..0, "bad offset".into()))?,
        Some(tz) => crossgate_config::parse_utc_offset(tz.get_ref()).ok_or_else(|| {
            err(
                tz.span(),
                format!(
                    "time zone {:?} is not a UTC offset; write e.g. \"+08:00\"",
                    tz.get_ref()
                ),
            )
        })?,
    };
    let limit = |rate: &Spanned<String>, burst: &Spanned<u32>| -> Result<Limit, ConfigError> {
        let rate = Rate::parse(rate.get_ref()).map_err(|m| err(rate.span(), m))?;
        if *burst.get_ref() == 0 {
            return Err(err(burst.span(), "burst must be at least 1".into()));
        }
        Ok(Limit {
            rate,
            burst: *burst.get_ref(),
        })
    };
    let compile = |p: &PartnerConfig| -> Result<PartnerLimits, ConfigError> {
        let base = limit(&p.rate, &p.burst)?;
        let mut schedule = Vec::new();
        for w in &p.schedule {
            let (start, end) = parse_window(w.window.get_ref()).ok_or_else(|| {
                err(
                    w.window.span(),
                    format!(
                        "window {:?} is not HH:MM-HH:MM, e.g. \"08:00-10:00\"",
                        w.window.get_ref()
                    ),
                )
            })?;
            schedule.push(Window {
                start,
                end,
                text: w.window.get_ref().clone(),
                limit: limit(&w.rate, &w.burst)?,
            });
        }
        Ok(PartnerLimits {
            publish: match &p.publish {
                Some(l) => limit(&l.rate, &l.burst)?,
                None => base.clone(),
            },
            query: match &p.query {
                Some(l) => limit(&l.rate, &l.burst)?,
                None => base,
            },
            schedule,
        })
    };
    let default = match &parsed.default {
        Some(d) => compile(d)?,
        None => PartnerLimits::uniform(Limit {
            rate: Rate::parse("100/s").map_err(|m| err(0..0, m))?,
            burst: 50,
        }),
    };
    let mut partners_out = BTreeMap::new();
    for (id, p) in &parsed.partner {
        if !partners.contains(&id.as_str()) {
            return Err(err(
                p.rate.span(),
                format!(
                    "[partner.{id}]: unknown partner; partners are listed in partners.toml: {}",
                    partners.join(", ")
                ),
            ));
        }
        partners_out.insert(id.clone(), compile(p)?);
    }
    Ok(LimitsConfig {
        offset,
        default,
        partners: partners_out,
    })
}

fn parse_window(s: &str) -> Option<(NaiveTime, NaiveTime)> {
    let (a, b) = s.split_once(['-', '–'])?;
    let start = NaiveTime::parse_from_str(a.trim(), "%H:%M").ok()?;
    let end = NaiveTime::parse_from_str(b.trim(), "%H:%M").ok()?;
    (start != end).then_some((start, end))
}
