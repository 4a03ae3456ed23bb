package feedback

// CollectorMetrics receives the collector's counters: Rejected by reason
// (see the Reject* constants), Accepted by message type.
type CollectorMetrics interface {
	Rejected(reason string)
	Accepted(typ string)
}
