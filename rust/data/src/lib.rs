//! kormo-data
