// Package feedback owns everything that leaves or reaches a device as
// feedback: the SQLite outbox through which every outbound MQTT record
// (status, alerts, results, feedback samples) is stored and forwarded, the
// feedback sample and label wire formats, chunking of large crops, sample
// selection, labels, retune requests, and the receiving side (Collector)
// that tuning workers run to build a training dataset.
//
// Delivery is at-least-once end to end: a record leaves the outbox only
// after the broker's PUBACK, and receivers deduplicate by the record's
// stable id. Tables owned here are prefixed feedback_ and migrated through
// Schema (device side) and CollectorSchema (worker side).
package feedback
