//! Phoenix Channels V2: frame codec and the sans-IO socket core.
