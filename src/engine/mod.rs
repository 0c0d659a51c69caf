//! The media engine: media-event session layer (sans-IO) and, later, the media plane.
