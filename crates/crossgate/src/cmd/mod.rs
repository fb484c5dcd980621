pub mod adapter;
pub mod map;
pub mod policy;
pub mod schema;
