//! Reading a department's mapping file from a config folder.

use crossgate_mapping::{ConfigError, DepartmentMapping};
use crossgate_schema::Registry;
use std::path::{Path, PathBuf};

/// Why a department's configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("unknown department {department:?}: no {path}; configured departments: {known}")]
    UnknownDepartment {
        department: String,
        path: PathBuf,
        known: String,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// The file holding a department's mapping: `<config>/departments/<id>.toml`.
pub fn department_file(config_dir: &Path, department: &str) -> PathBuf {
    config_dir
        .join("departments")
        .join(format!("{department}.toml"))
}

/// The departments that have a mapping file, in name order.
pub fn departments(config_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(config_dir.join("departments"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".toml").map(str::to_owned)
        })
        .collect();
    names.sort();
    names
}

/// Read and compile a department's mapping file.
pub fn load_department(
    config_dir: &Path,
    department: &str,
    registry: &Registry,
) -> Result<DepartmentMapping, LoadError> {
    let path = department_file(config_dir, department);
    let valid_name = !department.is_empty()
        && department
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid_name || !path.is_file() {
        return Err(LoadError::UnknownDepartment {
            department: department.to_owned(),
            known: departments(config_dir).join(", "),
            path,
        });
    }
    let text = std::fs::read_to_string(&path).map_err(|source| LoadError::Read {
        path: path.clone(),
        source,
    })?;
    let mapping = crossgate_mapping::compile(&path.display().to_string(), &text, registry)?;
    if mapping.department != department {
        return Err(ConfigError {
            file: path.display().to_string(),
            line: 1,
            message: format!(
                "department = {:?} but the file is named for {department:?}; make them agree",
                mapping.department
            ),
        }
        .into());
    }
    Ok(mapping)
}
