/** Fired after the read-only switch changes, so the banner reads /api/version again. */
export const VERSION_CHANGED = "haven:version-changed";
