package feedback

import "github.com/prometheus/client_golang/prometheus"

// PromMetrics exports the outbox and collector counters to Prometheus.
type PromMetrics struct {
	enqueued      *prometheus.CounterVec
	enqueuedBytes *prometheus.CounterVec
	sent          *prometheus.CounterVec
	sentBytes     *prometheus.CounterVec
	dropped       *prometheus.CounterVec
	failed        *prometheus.CounterVec
	depth         prometheus.Gauge
	depthBytes    prometheus.Gauge
	rejected      *prometheus.CounterVec
	accepted      *prometheus.CounterVec
}

var (
	_ OutboxMetrics    = (*PromMetrics)(nil)
	_ CollectorMetrics = (*PromMetrics)(nil)
)

// NewPromMetrics creates the collectors and registers them on reg.
func NewPromMetrics(reg prometheus.Registerer) (*PromMetrics, error) {
	kind := []string{"kind"}
	m := &PromMetrics{
		enqueued:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: "scopewatch_outbox_enqueued_total", Help: "Records stored in the outbox."}, kind),
		enqueuedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "scopewatch_outbox_enqueued_bytes_total", Help: "Payload bytes stored in the outbox."}, kind),
		sent:          prometheus.NewCounterVec(prometheus.CounterOpts{Name: "scopewatch_outbox_sent_total", Help: "Records acknowledged by the broker and removed from the outbox."}, kind),
		sentBytes:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "scopewatch_outbox_sent_bytes_total", Help: "Payload bytes acknowledged by the broker."}, kind),
		dropped:       prometheus.NewCounterVec(prometheus.CounterOpts{Name: "scopewatch_outbox_dropped_total", Help: "Records dropped because the outbox was full (feedback only)."}, kind),
		failed:        prometheus.NewCounterVec(prometheus.CounterOpts{Name: "scopewatch_outbox_publish_failures_total", Help: "Publishes not acknowledged in time; the record stays and is retried."}, kind),
		depth:         prometheus.NewGauge(prometheus.GaugeOpts{Name: "scopewatch_outbox_depth_records", Help: "Records waiting in the outbox."}),
		depthBytes:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "scopewatch_outbox_depth_bytes", Help: "Payload bytes waiting in the outbox."}),
		rejected:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: "scopewatch_collect_rejected_total", Help: "Inbound messages rejected, by reason."}, []string{"reason"}),
		accepted:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: "scopewatch_collect_accepted_total", Help: "Inbound messages stored, by type."}, []string{"type"}),
	}
	for _, c := range []prometheus.Collector{m.enqueued, m.enqueuedBytes, m.sent, m.sentBytes, m.dropped, m.failed, m.depth, m.depthBytes, m.rejected, m.accepted} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *PromMetrics) Enqueued(k Kind, b int) {
	m.enqueued.WithLabelValues(string(k)).Inc()
	m.enqueuedBytes.WithLabelValues(string(k)).Add(float64(b))
}
func (m *PromMetrics) Sent(k Kind, b int) {
	m.sent.WithLabelValues(string(k)).Inc()
	m.sentBytes.WithLabelValues(string(k)).Add(float64(b))
}
func (m *PromMetrics) Dropped(k Kind, n int) { m.dropped.WithLabelValues(string(k)).Add(float64(n)) }
func (m *PromMetrics) PublishFailed(k Kind)  { m.failed.WithLabelValues(string(k)).Inc() }
func (m *PromMetrics) Depth(r int, b int64) {
	m.depth.Set(float64(r))
	m.depthBytes.Set(float64(b))
}
func (m *PromMetrics) Rejected(reason string) { m.rejected.WithLabelValues(reason).Inc() }
func (m *PromMetrics) Accepted(typ string)    { m.accepted.WithLabelValues(typ).Inc() }
