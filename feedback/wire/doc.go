// Package wire owns the fleet's wire formats: the payloads of feedback
// samples and their chunks, labels, retune requests, retune events, model
// offers and their chunks, and alerts, their encoding, strict decoding and validation, and the ids and
// hashes they carry (SampleID, ChunkID, SlideHash). It is separate from
// package feedback because it imports no cgo package (feedback's outbox,
// labels and collector live on SQLite through go-sqlite3), so the fleet
// side (tuning, retune workers) can use it and its tests run with
// CGO_ENABLED=0.
//
// All payloads are JSON of at most MaxPayload bytes, decoded strictly:
// unknown, duplicated or case-folded keys are errors.
//
//   - scopewatch/v1/{site}/{device}/feedback, schema "scopewatch.feedback/v1"
//     (Sample): id, device, site, slide_hash (HMAC-SHA256 of the slide id
//     under the device secret), crop {format png|jpeg, sha256, bytes, and
//     either data (base64) or chunks}, p_parasitized, label_predicted,
//     model_version, time, reason uncertainty|drift|random.
//   - the same topic, schema "scopewatch.feedback.chunk/v1" (Chunk):
//     sample_id, index, count, sha256 of the whole crop, data (ChunkData
//     bytes except the last). A sample and its chunks travel together:
//     the device's outbox drops them as one group.
//   - scopewatch/v1/{site}/{device}/label, schema "scopewatch.label/v1"
//     (Label): feedback_id, label parasitized|uninfected, who, time.
//   - scopewatch/v1/{site}/retune/request, schema "scopewatch.retune/v1"
//     (RetuneRequest).
//   - scopewatch/v1/{site}/retune/event, schema "scopewatch.retune.event/v1"
//     (RetuneEvent): a retune job's state.
//   - scopewatch/v1/{site}/model/offer, retained, schema
//     "scopewatch.model.offer/v1" (ModelOffer): a signed bundle's version,
//     archive size and sha256, chunk count, manifest hash and signer.
//   - scopewatch/v1/{site}/model/chunk/{version}/{i}, retained, schema
//     "scopewatch.model.chunk/v1" (ModelChunk): ModelChunkData bytes of the
//     archive (the last may be shorter); AssembleModel checks the whole.
//   - the alert raised when the outbox drops feedback, schema
//     "scopewatch.alert/v1" (Alert).
package wire
