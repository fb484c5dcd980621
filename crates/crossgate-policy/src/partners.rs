//! `partners.toml`: every party the broker knows, with its role and, for
//! departments, where its adapter listens.

use crate::ConfigError;
use serde::Deserialize;
use toml::Spanned;

/// What a party may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A department: publishes and queries through `Broker`.
    Partner,
    /// Reads and verifies the audit log through `Audit`.
    Auditor,
    /// Tunes limits and reloads config through `Admin`.
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Partner => "partner",
            Role::Auditor => "auditor",
            Role::Operator => "operator",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Partner {
    pub id: String,
    pub name: String,
    pub role: Role,
    /// `host:port` of the department's adapter (partners only).
    pub adapter: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    partner: Vec<PartnerConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartnerConfig {
    id: Spanned<String>,
    name: String,
    role: Spanned<String>,
    adapter: Option<Spanned<String>>,
}

/// Compile `partners.toml`.
pub fn compile_partners(file: &str, text: &str) -> Result<Vec<Partner>, ConfigError> {
    let source = crossgate_config::Source::new(file, text);
    let err = |span: std::ops::Range<usize>, message: String| source.error(span, message);
    let parsed: File = source.parse()?;
    let mut out: Vec<Partner> = Vec::with_capacity(parsed.partner.len());
    for p in parsed.partner {
        let id = p.id.get_ref().clone();
        let valid = !id.is_empty()
            && id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid {
            return Err(err(
                p.id.span(),
                format!("partner id {id:?} must be lower-case letters, digits and '-'"),
            ));
        }
        if out.iter().any(|o| o.id == id) {
            return Err(err(p.id.span(), format!("partner {id:?} is listed twice")));
        }
        let role = match p.role.get_ref().as_str() {
            "partner" => Role::Partner,
            "auditor" => Role::Auditor,
            "operator" => Role::Operator,
            other => {
                return Err(err(
                    p.role.span(),
                    format!("unknown role {other:?}; use partner, auditor or operator"),
                ));
            }
        };
        if role == Role::Partner && p.adapter.is_none() {
            return Err(err(
                p.id.span(),
                format!("partner {id} needs `adapter = \"host:port\"`, where its adapter listens"),
            ));
        }
        out.push(Partner {
            id,
            name: p.name,
            role,
            adapter: p.adapter.map(Spanned::into_inner),
        });
    }
    Ok(out)
}
