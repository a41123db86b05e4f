//! kormo-model
