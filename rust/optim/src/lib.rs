//! kormo-optim
