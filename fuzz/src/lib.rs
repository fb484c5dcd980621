//! What the fuzz targets share: the repository's real schemas, partners and
//! department mapping files, loaded once per process.

use crossgate_mapping::DepartmentMapping;
use crossgate_schema::Registry;
use std::path::PathBuf;
use std::sync::OnceLock;

/// The repository root (the parent of `fuzz/`).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// The canonical schemas of `schemas/`.
pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        Registry::load_dir(repo().join("schemas")).expect("the repository's schemas load")
    })
}

/// The record types of the registry, in name order.
pub fn record_types() -> &'static [String] {
    static TYPES: OnceLock<Vec<String>> = OnceLock::new();
    TYPES.get_or_init(|| {
        registry()
            .record_types()
            .map(|s| s.record_type.to_owned())
            .collect()
    })
}

/// The partner ids of `deploy/local/partners.toml`.
pub fn partner_ids() -> &'static [&'static str] {
    static IDS: OnceLock<Vec<&'static str>> = OnceLock::new();
    IDS.get_or_init(|| {
        let path = repo().join("deploy/local/partners.toml");
        let text = std::fs::read_to_string(&path).expect("deploy/local/partners.toml is readable");
        crossgate_policy::compile_partners(&path.display().to_string(), &text)
            .expect("deploy/local/partners.toml compiles")
            .into_iter()
            .map(|p| &*Box::leak(p.id.into_boxed_str()))
            .collect()
    })
}

/// Every department mapping file of `deploy/local/departments/`, compiled,
/// in file name order.
pub fn departments() -> &'static [DepartmentMapping] {
    static DEPARTMENTS: OnceLock<Vec<DepartmentMapping>> = OnceLock::new();
    DEPARTMENTS.get_or_init(|| {
        let dir = repo().join("deploy/local/departments");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("deploy/local/departments is readable")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|path| {
                let text = std::fs::read_to_string(path).expect("a department file is readable");
                crossgate_mapping::compile(&path.display().to_string(), &text, registry())
                    .unwrap_or_else(|e| panic!("{e}"))
            })
            .collect()
    })
}

/// Split `data` into a selector byte and the rest.
pub fn selector(data: &[u8]) -> Option<(u8, &[u8])> {
    data.split_first().map(|(s, rest)| (*s, rest))
}
