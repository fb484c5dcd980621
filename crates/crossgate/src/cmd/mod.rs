pub mod adapter;
pub mod audit;
pub mod broker;
pub mod certs;
pub mod limits;
pub mod map;
pub mod policy;
pub mod schema;
