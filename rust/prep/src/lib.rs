//! kormo-prep
