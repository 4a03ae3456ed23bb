package feedback

// CollectorMetrics receives the collector's counters: Rejected by reason
// (see the Reason* constants), Accepted by message type.
type CollectorMetrics interface {
	Rejected(reason string)
	Accepted(typ string)
}
