pub mod adapter;
pub mod map;
pub mod schema;
