//! Every TOML configuration file crossgate reads, parsed from arbitrary text.
//!
//! Input: one selector byte (modulo 6), then the file's text:
//!
//! - 0: `broker.toml` (`crossgate_broker::BrokerConfig` through
//!   `crossgate_config::Source::parse`, as `BrokerConfig::load` reads it,
//!   with `[audit]`, `[delivery]` and `[server]`).
//! - 1: `partners.toml` (`crossgate_policy::compile_partners`).
//! - 2: `catalog.toml` (`crossgate_policy::compile`, against the real
//!   partners and schemas).
//! - 3: `limits.toml` (`crossgate_limits::parse_config`, against the real
//!   partners). A file that compiles is installed as operators' overrides,
//!   written back with `Limits::overrides_toml` and read again: the same
//!   publish and query limits.
//! - 4: a department mapping file (`crossgate_mapping::compile`, against
//!   the real schemas).
//! - 5: `limits.overrides.toml`, the file the broker writes: read as
//!   limits.toml is.
//!
//! Errors must name a line inside the file. Nothing may panic.
#![no_main]

use crossgate_fuzz::{partner_ids, registry, selector};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((sel, rest)) = selector(data) else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let lines = text.split('\n').count();
    let check = |e: &crossgate_config::ConfigError| {
        assert!(e.line <= lines, "{e}: line {} of {lines}", e.line);
        let _ = e.to_string();
    };
    match sel % 6 {
        0 => {
            let source = crossgate_config::Source::new("broker.toml", text);
            match source.parse::<crossgate_broker::BrokerConfig>() {
                Ok(config) => {
                    let _ = config.default_deadline();
                    let _ = config.delivery_timeout();
                }
                Err(e) => check(&e),
            }
        }
        1 => match crossgate_policy::compile_partners("partners.toml", text) {
            Ok(partners) => {
                for p in &partners {
                    assert!(!p.id.is_empty());
                    let _ = p.role.as_str();
                }
            }
            Err(e) => check(&e),
        },
        2 => match crossgate_policy::compile("catalog.toml", text, partner_ids(), registry()) {
            Ok(policy) => {
                for grant in policy.grants() {
                    let release = crossgate_policy::Release {
                        grant,
                        approval: None,
                    };
                    let _ = release.field_paths();
                }
                for approval in policy.approvals() {
                    let _ = approval.describe_subject();
                }
                let _ = policy.time_zone();
            }
            Err(e) => check(&e),
        },
        3 | 5 => limits(text, &check),
        _ => match crossgate_mapping::compile("departments/x.toml", text, registry()) {
            Ok(mapping) => {
                for rm in &mapping.records {
                    let _ = rm.id_canonical_path();
                    let _ = rm.native_for("/");
                }
            }
            Err(e) => check(&e),
        },
    }
});

fn limits(text: &str, check: &dyn Fn(&crossgate_config::ConfigError)) {
    let config = match crossgate_limits::parse_config("limits.toml", text, partner_ids()) {
        Ok(config) => config,
        Err(e) => {
            check(&e);
            return;
        }
    };
    // Written back as the operators' overrides file, read again.
    let partners = config.partners.clone();
    let limits = crossgate_limits::Limits::new(config);
    limits.set_overrides(partners.clone());
    let written = limits
        .overrides_toml()
        .unwrap_or_else(|e| panic!("overrides cannot be written: {e}"));
    let back = crossgate_limits::parse_config("limits.overrides.toml", &written, partner_ids())
        .unwrap_or_else(|e| {
            panic!("the overrides file written does not read back: {e}\n{written}")
        });
    assert_eq!(back.partners.len(), partners.len());
    for (id, before) in &partners {
        let after = &back.partners[id];
        assert_eq!(after.publish, before.publish, "{id}: publish\n{written}");
        assert_eq!(after.query, before.query, "{id}: query\n{written}");
    }
}
