// Package feedback owns everything that leaves or reaches a device as
// feedback: the SQLite outbox through which every outbound MQTT record
// (status, alerts, results, feedback samples) is stored and forwarded, the
// feedback sample and label wire formats, chunking of large crops, sample
// selection, labels, retune requests, and the receiving side (Collector)
// that tuning workers run to build a training dataset.
//
// Delivery is at-least-once end to end: a record leaves the outbox only
// after the broker's PUBACK, and receivers deduplicate by the record's
// stable id. Tables owned here are prefixed feedback_ (device side, Schema)
// and collect_ (worker side, CollectorSchema).
//
// Wire formats (JSON, at most MaxPayload bytes, decoded strictly: unknown,
// duplicated or case-folded keys are errors):
//
//   - scopewatch/v1/{site}/{device}/feedback, schema "scopewatch.feedback/v1"
//     (Sample): id, device, site, slide_hash (HMAC-SHA256 of the slide id
//     under the device secret), crop {format png|jpeg, sha256, bytes, and
//     either data (base64) or chunks}, p_parasitized, label_predicted,
//     model_version, time, reason uncertainty|drift|random.
//   - the same topic, schema "scopewatch.feedback.chunk/v1" (Chunk):
//     sample_id, index, count, sha256 of the whole crop, data (ChunkData
//     bytes except the last). Chunks and their sample share one outbox
//     drop group, so a full outbox drops a sample whole.
//   - scopewatch/v1/{site}/{device}/label, schema "scopewatch.label/v1"
//     (Label): feedback_id, label parasitized|uninfected, who, time.
//   - scopewatch/v1/{site}/retune/request, schema "scopewatch.retune/v1"
//     (RetuneRequest).
//   - alerts raised here (feedback dropped from a full outbox) use schema
//     "scopewatch.alert/v1" (DropAlert).
package feedback
