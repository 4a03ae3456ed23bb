package daemon

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/scopewatch/scopewatch/feedback"
)

// serveMetrics are the daemon's Prometheus series (own registry, so that a
// test can run several daemons in one process).
type serveMetrics struct {
	reg                 *prometheus.Registry
	images              *prometheus.CounterVec
	cells               *prometheus.CounterVec
	slides              *prometheus.CounterVec
	verdicts            *prometheus.CounterVec
	inboxOldest         prometheus.Gauge
	inboxStuck          prometheus.Counter
	errors              *prometheus.CounterVec
	implausible         *prometheus.CounterVec
	httpErrors          *prometheus.CounterVec
	alerts              *prometheus.CounterVec
	qualityFlags        *prometheus.CounterVec
	analyzeSeconds      *prometheus.HistogramVec
	processSeconds      *prometheus.HistogramVec
	queueWait           prometheus.Histogram
	queueDepth          prometheus.Gauge
	mqttConnected       prometheus.Gauge
	mqttDisconnects     prometheus.Counter
	duplicateIdentity   prometheus.Counter
	mqttConnectFailures *prometheus.CounterVec
	modelInfo           *prometheus.GaugeVec
	dbBytes             prometheus.Gauge
	diskFree            prometheus.Gauge
	outbox              *feedback.PromMetrics

	driftEvents        *prometheus.CounterVec
	driftLastStatistic *prometheus.GaugeVec
	driftLastThreshold *prometheus.GaugeVec
	driftStatistic     *prometheus.GaugeVec
	driftThreshold     *prometheus.GaugeVec
	driftCells         prometheus.Counter
	driftSkipped       prometheus.Counter
	driftResets        *prometheus.CounterVec
	driftSaves         prometheus.Counter
	driftActive        prometheus.Gauge

	feedbackSamples   prometheus.Counter
	feedbackWindows   prometheus.Counter
	feedbackLabelled  prometheus.Gauge
	feedbackAgreement prometheus.Gauge
	retuneRequests    prometheus.Counter
	labelsRejected    *prometheus.CounterVec

	rolloutStage *prometheus.GaugeVec
	shadowCells  prometheus.Counter
}

func newServeMetrics() *serveMetrics {
	latency := []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}
	m := &serveMetrics{
		reg: prometheus.NewRegistry(),
		images: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "scopewatch_images_total",
			Help: "Images taken, by source (inbox, http, camera) and outcome (ok, rejected, skipped, failed)."}, []string{"source", "outcome"}),
		implausible: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "scopewatch_implausible_total",
			Help: "Crops and segmented field cells refused by the plausibility gate (never classified), by kind (crop, field) and the check that failed (size, a colour or texture statistic, feature_distance)."}, []string{"kind", "check"}),
		cells: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "scopewatch_cells_total",
			Help: "Cells classified, by label."}, []string{"label"}),
		slides: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "scopewatch_slides_completed_total",
			Help: "Slides completed, by stopping reason."}, []string{"reason"}),
		inboxOldest: prometheus.NewGauge(prometheus.GaugeOpts{Name: "scopewatch_inbox_oldest_seconds",
			Help: "How long the image waiting longest in the inbox has been there (0: none waiting)."}),
		inboxStuck: prometheus.NewCounter(prometheus.CounterOpts{Name: "scopewatch_inbox_stuck_total",
			Help: "Images that waited in the inbox longer than inbox.stuck_after (each counted once)."}),
		verdicts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "scopewatch_slide_verdicts_total",
			Help: "Slides completed, by verdict (ok, flagged, inconclusive)."}, []string{"verdict"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "scopewatch_errors_total",
			Help: "Errors by reason (bad-image reasons, store, analyze, inbox, mqtt_publish)."}, []string{"reason"}),
		httpErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "scopewatch_http_errors_total",
			Help: "HTTP requests answered with an error, by reason."}, []string{"reason"}),
		alerts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "scopewatch_alerts_total",
			Help: "Alerts raised, by kind."}, []string{"kind"}),
		qualityFlags: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "scopewatch_slide_quality_flags_total",
			Help: "Completed slides flagged by the slide quality gate, by check (stain, brightness, sharpness, framing)."}, []string{"check"}),
		analyzeSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "scopewatch_analyze_seconds",
			Help: "Decode, segmentation and classification time per image, by kind.", Buckets: latency}, []string{"kind"}),
		processSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "scopewatch_process_seconds",
			Help: "Analysis plus storage time per image, by kind.", Buckets: latency}, []string{"kind"}),
		queueWait: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "scopewatch_queue_wait_seconds",
			Help: "Time images waited for a worker.", Buckets: latency}),
		queueDepth: prometheus.NewGauge(prometheus.GaugeOpts{Name: "scopewatch_queue_depth",
			Help: "Images waiting for a worker."}),
		mqttConnected: prometheus.NewGauge(prometheus.GaugeOpts{Name: "scopewatch_mqtt_connected",
			Help: "1 while connected to the broker."}),
		mqttDisconnects: prometheus.NewCounter(prometheus.CounterOpts{Name: "scopewatch_mqtt_connection_lost_total",
			Help: "Broker connections lost."}),
		duplicateIdentity: prometheus.NewCounter(prometheus.CounterOpts{Name: "scopewatch_mqtt_duplicate_identity_total",
			Help: "Other processes seen publishing this device's status (same site and device names)."}),
		mqttConnectFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "scopewatch_mqtt_connect_failures_total",
			Help: "Failed broker connection attempts, by cause (auth, tls, network, protocol)."}, []string{"cause"}),
		modelInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "scopewatch_model_info",
			Help: "The model version serving (value 1)."}, []string{"version"}),
		dbBytes: prometheus.NewGauge(prometheus.GaugeOpts{Name: "scopewatch_db_used_bytes",
			Help: "Bytes used by the database's rows (the cap compares against this)."}),
		diskFree: prometheus.NewGauge(prometheus.GaugeOpts{Name: "scopewatch_disk_free_bytes",
			Help: "Free bytes on the state file system."}),
		driftEvents: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "scopewatch_drift_events_total",
			Help: "Drift events (a detector crossing its calibrated threshold), by signal and level (warn, alarm)."}, []string{"signal", "level"}),
		driftLastStatistic: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "scopewatch_drift_last_event_statistic",
			Help: "Statistic of the last drift event, by signal and level."}, []string{"signal", "level"}),
		driftLastThreshold: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "scopewatch_drift_last_event_threshold",
			Help: "Threshold the last drift event crossed, by signal and level."}, []string{"signal", "level"}),
		driftStatistic: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "scopewatch_drift_statistic",
			Help: "Current statistic of each drift test (NaN while its window fills), by signal and window size."}, []string{"signal", "window"}),
		driftThreshold: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "scopewatch_drift_threshold",
			Help: "Current threshold of each drift test, by signal, window size and level."}, []string{"signal", "window", "level"}),
		driftCells: prometheus.NewCounter(prometheus.CounterOpts{Name: "scopewatch_drift_cells_total",
			Help: "Cells fed to the drift detectors."}),
		driftSkipped: prometheus.NewCounter(prometheus.CounterOpts{Name: "scopewatch_drift_cells_skipped_total",
			Help: "Classified cells the drift detectors could not take (no features while the embedding detector runs)."}),
		driftResets: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "scopewatch_drift_resets_total",
			Help: "Drift detection restarts, by reason (ack, new_monitor)."}, []string{"reason"}),
		driftSaves: prometheus.NewCounter(prometheus.CounterOpts{Name: "scopewatch_drift_state_saves_total",
			Help: "Drift detector states saved to the database."}),
		driftActive: prometheus.NewGauge(prometheus.GaugeOpts{Name: "scopewatch_drift_active",
			Help: "1 while the drift detectors run for the serving model."}),
		feedbackSamples: prometheus.NewCounter(prometheus.CounterOpts{Name: "scopewatch_feedback_samples_total",
			Help: "Cells selected as feedback samples and stored in the outbox."}),
		feedbackWindows: prometheus.NewCounter(prometheus.CounterOpts{Name: "scopewatch_feedback_windows_total",
			Help: "Feedback windows completed."}),
		feedbackLabelled: prometheus.NewGauge(prometheus.GaugeOpts{Name: "scopewatch_feedback_labelled",
			Help: "Feedback samples with a label (refreshed at each window's end)."}),
		feedbackAgreement: prometheus.NewGauge(prometheus.GaugeOpts{Name: "scopewatch_feedback_label_agreement",
			Help: "Fraction of labelled samples whose label agrees with the prediction (NaN without labels; over-represents hard cells)."}),
		retuneRequests: prometheus.NewCounter(prometheus.CounterOpts{Name: "scopewatch_retune_requests_total",
			Help: "Retune requests queued."}),
		labelsRejected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "scopewatch_labels_rejected_total",
			Help: "Inbound label messages rejected, by reason."}, []string{"reason"}),
	}
	m.rolloutStage = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "scopewatch_rollout_stage",
		Help: "1 for the model rollout's current stage (idle, downloading, validating, shadow, promoted, refused, rolled_back) and the version it concerns."}, []string{"stage", "version"})
	m.shadowCells = prometheus.NewCounter(prometheus.CounterOpts{Name: "scopewatch_shadow_cells_total",
		Help: "Cells a candidate model classified in shadow beside the serving model."})
	m.reg.MustRegister(m.images, m.implausible, m.cells, m.slides, m.verdicts, m.inboxOldest, m.inboxStuck, m.errors, m.httpErrors, m.alerts, m.qualityFlags, m.analyzeSeconds, m.processSeconds,
		m.queueWait, m.queueDepth, m.mqttConnected, m.duplicateIdentity, m.mqttConnectFailures, m.mqttDisconnects, m.modelInfo,
		m.dbBytes, m.diskFree,
		m.driftEvents, m.driftLastStatistic, m.driftLastThreshold, m.driftStatistic, m.driftThreshold,
		m.driftCells, m.driftSkipped, m.driftResets, m.driftSaves, m.driftActive,
		m.feedbackSamples, m.feedbackWindows, m.feedbackLabelled, m.feedbackAgreement, m.retuneRequests, m.labelsRejected,
		m.rolloutStage, m.shadowCells,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	var err error
	if m.outbox, err = feedback.NewPromMetrics(m.reg); err != nil {
		// Only a duplicate registration fails, and the registry is new.
		panic(err)
	}
	return m
}
