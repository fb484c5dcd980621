pub mod adapter;
pub mod broker;
pub mod certs;
pub mod map;
pub mod policy;
pub mod schema;
