// Package feedback owns the SQLite side of feedback: the outbox through
// which every outbound MQTT record (status, alerts, results, feedback
// samples) is stored and forwarded, the producer that turns selected cells
// into feedback records, labels and agreement on the device, retune
// requests, and the receiving side (Collector) that tuning workers run to
// build a training dataset.
//
// The parts that need no database live in their own packages, which import
// no cgo package so that the fleet side can use them: feedback/wire (the
// payloads of samples, chunks, labels, retune requests and drop alerts,
// their strict decoders and the ids and hashes they carry) and
// feedback/selection (which cells become samples). This package depends on
// them, never the reverse.
//
// Delivery is at-least-once end to end: a record leaves the outbox only
// after the broker's PUBACK, and receivers deduplicate by the record's
// stable id. A sample and its chunks share one outbox drop group, so a full
// outbox drops a sample whole. Tables owned here are prefixed feedback_
// (device side, Schema) and collect_ (worker side, CollectorSchema).
package feedback
