"""Data layer: publisher formats -> canonical events/items tables -> prepared sessions and graphs."""
