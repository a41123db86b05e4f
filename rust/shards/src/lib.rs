//! kormo-shards
