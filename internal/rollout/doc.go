// Package rollout owns how a device takes a new model: the two model slots
// on disk and the pointer between them, the anti-rollback floor, the
// download of an offered bundle, and the golden-set check a candidate must
// pass before it may run beside the champion.
//
// # Slots
//
// A rollout folder holds two bundle folders, a and b, and one pointer,
// current, a symbolic link to the slot that serves:
//
//	DIR/a/         a bundle (manifest.json, backbone.onnx, ...)
//	DIR/b/         the other bundle, or nothing yet
//	DIR/current -> a
//	DIR/state.json champion and previous versions, the floor, refusals
//
// The daemon's model.path is DIR/current. A candidate is written only into
// the slot current does not name, through a temporary folder renamed into
// place, with every file and folder fsynced; promotion is one rename of a
// new link over current; rollback is the same rename back. A rename is
// atomic on POSIX file systems, so a SIGKILL or a power cut at any step
// leaves current naming either the old or the new bundle, each complete,
// never a half-installed one. state.json is written after the link; when a
// crash falls between the two, OpenSlots reconciles the state from the link
// (the link is the truth, the state is its history).
//
// # Versions move forward
//
// The floor is the highest version the device ever served. An offer at or
// below it is refused (ErrNotNewer): a replayed or stale offer cannot take
// a device back to a model it left. Only an operator's rollback goes back,
// and the version rolled back from stays refused, so the retained offer
// that brought it cannot bring it again.
package rollout
