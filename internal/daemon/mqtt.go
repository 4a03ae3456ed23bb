package daemon

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/scopewatch/scopewatch/feedback"
	"github.com/scopewatch/scopewatch/internal/mqttconn"
)

// mqttLink owns the broker connection: the retained status (online /
// degraded, offline as the last will and on a clean stop) and the relay
// from serve_outbox into the shared outbox, whose sender publishes at QoS1
// and deletes a record only after the broker's PUBACK. Results produced
// while the broker is away wait in SQLite, not in memory.
type mqttLink struct {
	d       *Daemon
	mu      sync.Mutex
	client  mqtt.Client
	outbox  *feedback.Outbox
	relayMu sync.Mutex
	wakeCh  chan struct{}
	up      chan struct{} // signalled on every (re)connect
	since   time.Time
}

type statusPayload struct {
	Schema       string    `json:"schema"`
	Site         string    `json:"site"`
	Device       string    `json:"device"`
	State        string    `json:"state"`
	Reasons      []string  `json:"reasons,omitempty"`
	ModelVersion string    `json:"model_version"`
	Boot         int64     `json:"boot"`
	Since        time.Time `json:"since"`
	At           time.Time `json:"at"`
}

func newMQTTLink(d *Daemon) *mqttLink {
	return &mqttLink{d: d, wakeCh: make(chan struct{}, 1), up: make(chan struct{}, 1), since: d.now().UTC()}
}

func (m *mqttLink) status(state string, reasons []string) []byte {
	cfg := m.d.config()
	b, _ := json.Marshal(statusPayload{Schema: "scopewatch.status/v1", Site: cfg.Site, Device: cfg.Device, State: state, Reasons: reasons,
		ModelVersion: m.d.model.ModelVersion(), Boot: m.d.boot, Since: m.since, At: m.d.now().UTC()})
	return b
}

func (m *mqttLink) wake() {
	select {
	case m.wakeCh <- struct{}{}:
	default:
	}
}

func (m *mqttLink) connected() bool {
	m.mu.Lock()
	c := m.client
	m.mu.Unlock()
	return c != nil && c.IsConnectionOpen()
}

// publishStatus sends the current retained status (fire and forget: it is
// re-sent on every connect, and only the latest value matters).
func (m *mqttLink) publishStatus() {
	m.mu.Lock()
	c := m.client
	m.mu.Unlock()
	if c == nil || !c.IsConnectionOpen() {
		return
	}
	state, reasons := m.d.statusState()
	c.Publish(m.d.topic("status"), 1, true, m.status(state, reasons))
}

func (m *mqttLink) run(ctx context.Context) {
	cfg := m.d.config()
	m.mu.Lock()
	outbox := m.outbox
	m.mu.Unlock()
	if outbox == nil {
		return // newDaemon logged why
	}
	clientID := cfg.MQTT.ClientID
	if clientID == "" {
		clientID = "scopewatch-" + cfg.Site + "-" + cfg.Device
	}
	mc := mqttconn.Config{
		Broker: cfg.MQTT.Broker, ClientID: clientID, Username: cfg.MQTT.Username, Password: cfg.MQTT.Password,
		CAFile: cfg.MQTT.TLS.CAFile, CertFile: cfg.MQTT.TLS.CertFile, KeyFile: cfg.MQTT.TLS.KeyFile,
		KeepAlive: cfg.MQTT.KeepAlive, ConnectTimeout: cfg.MQTT.ConnectTimeout, MaxReconnectInterval: cfg.MQTT.MaxBackoff,
		ConnectRetryInterval: time.Second,
		// Labels are acknowledged once stored (or rejected), so a crash
		// between delivery and storage gets them redelivered.
		AutoAckDisabled: m.d.fb != nil,
		Will:            mqttconn.Will{Topic: m.d.topic("status"), Payload: m.status("offline", nil), QoS: 1, Retain: true},
	}
	client, err := mqttconn.New(mc, m.d.log, mqttconn.Hooks{
		OnConnect: func(c mqtt.Client) {
			m.d.metrics.mqttConnected.Set(1)
			if m.d.fb != nil {
				m.d.fb.subscribe(ctx, c)
			}
			select {
			case m.up <- struct{}{}:
			default:
			}
		},
		OnConnectionLost: func(mqtt.Client, error) {
			m.d.metrics.mqttConnected.Set(0)
			m.d.metrics.mqttDisconnects.Inc()
		},
	})
	if err != nil {
		m.d.log.Error("mqtt disabled: bad configuration", "err", err)
		m.d.setDegraded("mqtt_config", err.Error(), true)
		return
	}
	if err := outbox.Start(client); err != nil {
		m.d.log.Error("mqtt outbox sender failed to start", "err", err)
	}
	m.mu.Lock()
	m.client = client
	m.mu.Unlock()
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := outbox.Close(closeCtx); err != nil {
			m.d.log.Warn("closing the outbox", "err", err)
		}
		// A clean goodbye: offline retained, then disconnect (the will is
		// only for crashes).
		if client.IsConnectionOpen() {
			t := client.Publish(m.d.topic("status"), 1, true, m.status("offline", nil))
			t.WaitTimeout(2 * time.Second)
		}
		client.Disconnect(500)
	}()
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		m.relay(ctx)
		select {
		case <-ctx.Done():
			return
		case <-m.up:
			m.publishStatus()
		case <-m.wakeCh:
		case <-tick.C:
		}
	}
}

// relay hands serve_outbox rows to the shared outbox and marks them.
func (m *mqttLink) relay(ctx context.Context) {
	m.relayMu.Lock()
	defer m.relayMu.Unlock()
	m.mu.Lock()
	ob := m.outbox
	m.mu.Unlock()
	if ob == nil {
		return
	}
	for ctx.Err() == nil {
		msgs, err := m.d.db.pending(ctx, 64)
		if err != nil || len(msgs) == 0 {
			if err != nil {
				m.d.log.Warn("reading serve_outbox failed", "err", err)
			}
			return
		}
		recs := make([]feedback.Record, len(msgs))
		ids := make([]string, len(msgs))
		for i, msg := range msgs {
			kind := feedback.KindResult
			if msg.Priority == prioAlert {
				kind = feedback.KindAlert
			}
			recs[i] = feedback.Record{ID: msg.ID, Kind: kind, Topic: msg.Topic, Payload: msg.Payload, QoS: 1}
			ids[i] = msg.ID
		}
		if err := ob.EnqueueBatch(ctx, recs...); err != nil {
			m.d.log.Error("handing results to the outbox failed; will retry", "err", err)
			m.d.metrics.errors.WithLabelValues("outbox").Inc()
			return
		}
		if err := m.d.db.markRelayed(ctx, ids); err != nil {
			m.d.log.Error("marking results relayed failed; they will be handed over again (receivers dedupe by id)", "err", err)
			return
		}
		m.d.metrics.published.Add(float64(len(ids)))
	}
}

// flush relays what is left and waits, within ctx, for the outbox to drain
// while connected (used at shutdown; what is not acknowledged stays in the
// database for the next start).
func (m *mqttLink) flush(ctx context.Context) {
	m.relay(ctx)
	m.mu.Lock()
	ob := m.outbox
	m.mu.Unlock()
	if ob == nil {
		return
	}
	deadline := time.Now().Add(3 * time.Second)
	for m.connected() && ctx.Err() == nil && time.Now().Before(deadline) {
		if n, _ := ob.Depth(); n == 0 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}
