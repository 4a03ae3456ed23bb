package retune

import "github.com/prometheus/client_golang/prometheus"

// PromWorkerMetrics exports the worker's counters to Prometheus.
type PromWorkerMetrics struct {
	requests *prometheus.CounterVec
	jobs     *prometheus.CounterVec
	running  prometheus.Gauge
	offers   prometheus.Counter
	bytes    prometheus.Counter
}

var _ WorkerMetrics = (*PromWorkerMetrics)(nil)

// NewPromWorkerMetrics registers the worker's metrics on reg.
func NewPromWorkerMetrics(reg prometheus.Registerer) (*PromWorkerMetrics, error) {
	m := &PromWorkerMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "scopewatch_retune_requests_total", Help: "Retune requests received, by outcome (queued, merged into a site's open job, duplicate, invalid)."}, []string{"outcome"}),
		jobs:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "scopewatch_retune_jobs_total", Help: "Retune jobs finished, by state (accepted, refused, failed)."}, []string{"state"}),
		running:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "scopewatch_retune_jobs_running", Help: "Retune jobs in progress (0 or 1)."}),
		offers:   prometheus.NewCounter(prometheus.CounterOpts{Name: "scopewatch_retune_offers_total", Help: "Model offers published."}),
		bytes:    prometheus.NewCounter(prometheus.CounterOpts{Name: "scopewatch_retune_offer_bytes_total", Help: "Bundle archive bytes published in offers."}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.jobs, m.running, m.offers, m.bytes} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *PromWorkerMetrics) Request(outcome string) { m.requests.WithLabelValues(outcome).Inc() }
func (m *PromWorkerMetrics) Job(state string)       { m.jobs.WithLabelValues(state).Inc() }
func (m *PromWorkerMetrics) Running(n int)          { m.running.Set(float64(n)) }
func (m *PromWorkerMetrics) OfferPublished(b int) {
	m.offers.Inc()
	m.bytes.Add(float64(b))
}
