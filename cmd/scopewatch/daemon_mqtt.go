package main

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/scopewatch/scopewatch/internal/mqttconn"
)

// mqttLink publishes the retained status and drains serve_outbox: a message
// is marked sent only after the broker's PUBACK, so results produced while
// the broker is away go out when it is back, and a crash re-sends at most
// the messages whose PUBACK was not yet recorded (receivers dedupe by id).
type mqttLink struct {
	d      *Daemon
	mu     sync.Mutex
	client mqtt.Client
	// drainMu keeps the shutdown flush and the loop from sending the same
	// message twice.
	drainMu sync.Mutex
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
// re-sent on every connect, and the latest value is all that matters).
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
	clientID := cfg.MQTT.ClientID
	if clientID == "" {
		clientID = "scopewatch-" + cfg.Site + "-" + cfg.Device
	}
	mc := mqttconn.Config{
		Broker: cfg.MQTT.Broker, ClientID: clientID, Username: cfg.MQTT.Username, Password: cfg.MQTT.Password,
		CAFile: cfg.MQTT.TLS.CAFile, CertFile: cfg.MQTT.TLS.CertFile, KeyFile: cfg.MQTT.TLS.KeyFile,
		KeepAlive: cfg.MQTT.KeepAlive, ConnectTimeout: cfg.MQTT.ConnectTimeout, MaxReconnectInterval: cfg.MQTT.MaxBackoff,
		ConnectRetryInterval: time.Second,
		Will:                 mqttconn.Will{Topic: m.d.topic("status"), Payload: m.status("offline", nil), QoS: 1, Retain: true},
	}
	client, err := mqttconn.New(mc, m.d.log, mqttconn.Hooks{
		OnConnect: func(c mqtt.Client) {
			m.d.metrics.mqttConnected.Set(1)
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
	if cfg.MQTT.TLS.InsecureSkipVerify {
		m.d.log.Warn("mqtt.tls.insecure_skip_verify is set: the broker certificate is not checked")
	}
	m.mu.Lock()
	m.client = client
	m.mu.Unlock()
	defer func() {
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
		select {
		case <-ctx.Done():
			return
		case <-m.up:
			m.publishStatus()
		case <-m.wakeCh:
		case <-tick.C:
		}
		m.drain(ctx)
	}
}

// drain publishes pending messages in priority order while connected.
func (m *mqttLink) drain(ctx context.Context) int {
	m.drainMu.Lock()
	defer m.drainMu.Unlock()
	m.mu.Lock()
	c := m.client
	m.mu.Unlock()
	sent := 0
	for c != nil && c.IsConnectionOpen() && ctx.Err() == nil {
		msgs, err := m.d.db.pending(ctx, 32)
		if err != nil {
			m.d.log.Warn("reading outbox failed", "err", err)
			return sent
		}
		if len(msgs) == 0 {
			return sent
		}
		// Publish the batch, then wait for each PUBACK.
		toks := make([]mqtt.Token, len(msgs))
		for i, msg := range msgs {
			toks[i] = c.Publish(msg.Topic, 1, false, msg.Payload)
		}
		for i, t := range toks {
			if !t.WaitTimeout(15*time.Second) || t.Error() != nil {
				m.d.metrics.errors.WithLabelValues("mqtt_publish").Inc()
				m.d.log.Debug("publish not acknowledged; will retry", "id", msgs[i].ID, "err", t.Error())
				return sent
			}
			if err := m.d.db.markSent(ctx, msgs[i].ID); err != nil {
				m.d.log.Error("recording PUBACK failed; the message may be sent again", "id", msgs[i].ID, "err", err)
				return sent
			}
			m.d.metrics.published.Inc()
			sent++
		}
	}
	return sent
}

// flush drains what is pending within ctx (used at shutdown).
func (m *mqttLink) flush(ctx context.Context) {
	if m.connected() {
		m.drain(ctx)
	}
}
