//! kormo-tokenizer
