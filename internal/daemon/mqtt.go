package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/scopewatch/scopewatch/feedback"
	"github.com/scopewatch/scopewatch/internal/config"
	"github.com/scopewatch/scopewatch/internal/mqttconn"
)

// mqttLink owns the broker connection: the retained status (online /
// degraded, offline as the last will and on a clean stop) and the outbox's
// sender, which publishes at QoS1 and deletes a record only after the
// broker's PUBACK. Results, alerts and status are written to the outbox in
// SQLite first, so what is produced while the broker is away waits on disk,
// not in memory.
type mqttLink struct {
	mqttDeps
	outbox *feedback.Outbox
	mu     sync.Mutex
	client mqtt.Client
	others map[string]bool // other processes seen with this identity
	up     chan struct{}   // signalled on every (re)connect
	since  time.Time
}

type statusPayload struct {
	Schema       string   `json:"schema"`
	Site         string   `json:"site"`
	Device       string   `json:"device"`
	State        string   `json:"state"`
	Reasons      []string `json:"reasons,omitempty"`
	ModelVersion string   `json:"model_version"`
	// Instance and Boot say which database and start of the device sent
	// it: a status with another pair, after this one started, means a
	// second process uses the same device identity.
	Instance string         `json:"instance"`
	Boot     int64          `json:"boot"`
	Since    time.Time      `json:"since"`
	At       time.Time      `json:"at"`
	Rollout  *statusRollout `json:"rollout,omitempty"`
}

// mqttDeps is what the link needs of the daemon, given at construction.
type mqttDeps struct {
	log      *slog.Logger
	config   func() config.Config
	now      func() time.Time
	metrics  *serveMetrics
	instance string
	boot     int64
	topic    func(mqttconn.Kind) string
	// modelVersion and statusState describe the daemon in its status;
	// setDegraded records a reason it is degraded.
	modelVersion func() string
	statusState  func() (string, []string)
	setDegraded  func(reason, detail string, on bool)
	// subscribe, when set, takes the device's inbound topics on every
	// connect (labels); their messages are acknowledged once stored.
	subscribe func(ctx context.Context, c mqtt.Client)
	// rollout, when set, is the model rollout's state for the status.
	rollout func() *statusRollout
}

// statusRollout is the model rollout in the retained status: its stage,
// the version the stage concerns, and the candidate in the other slot.
type statusRollout struct {
	Stage     string `json:"stage"`
	Version   string `json:"version,omitempty"`
	Candidate string `json:"candidate,omitempty"`
	Previous  string `json:"previous,omitempty"`
}

func newMQTTLink(deps mqttDeps, outbox *feedback.Outbox) *mqttLink {
	return &mqttLink{mqttDeps: deps, outbox: outbox, up: make(chan struct{}, 1), since: deps.now().UTC()}
}

func (m *mqttLink) status(state string, reasons []string) []byte {
	cfg := m.config()
	b, err := json.Marshal(statusPayload{Schema: "scopewatch.status/v1", Site: cfg.Site, Device: cfg.Device, State: state, Reasons: reasons,
		ModelVersion: m.modelVersion(), Instance: m.instance, Boot: m.boot, Since: m.since, At: m.now().UTC(), Rollout: m.rolloutStatus()})
	if err != nil {
		// Strings and times only: cannot fail; an empty status is still a
		// retained message the fleet can see.
		m.log.Error("encoding the status failed", "err", err)
	}
	return b
}

// onStatus warns once per other process seen publishing this device's
// status, and marks the daemon degraded: its results may be mixed with
// another's, and the broker connection will keep flapping.
func (m *mqttLink) onStatus(_ mqtt.Client, msg mqtt.Message) {
	defer msg.Ack() // manual acks are on when labels are taken
	var p statusPayload
	if err := json.Unmarshal(msg.Payload(), &p); err != nil {
		return
	}
	if (p.Instance == m.instance && p.Boot == m.boot) || p.State == "offline" || p.At.Before(m.since) {
		return // ours, gone, or from before this start (a retained leftover)
	}
	other := fmt.Sprintf("instance %s boot %d", p.Instance, p.Boot)
	m.mu.Lock()
	seen := m.others[other]
	if m.others == nil {
		m.others = map[string]bool{}
	}
	m.others[other] = true
	m.mu.Unlock()
	if seen {
		return
	}
	detail := fmt.Sprintf("another process publishes as site %s device %s (%s; this one is instance %s boot %d): give each microscope its own device name",
		p.Site, p.Device, other, m.instance, m.boot)
	m.log.Warn("duplicate device identity on the broker", "other_instance", p.Instance, "other_boot", p.Boot, "detail", detail)
	m.metrics.duplicateIdentity.Inc()
	m.setDegraded("duplicate_identity", detail, true)
}

func (m *mqttLink) rolloutStatus() *statusRollout {
	if m.rollout == nil {
		return nil
	}
	return m.rollout()
}

func (m *mqttLink) connected() bool {
	m.mu.Lock()
	c := m.client
	m.mu.Unlock()
	return c != nil && c.IsConnectionOpen()
}

// publishStatus queues the current retained status in the outbox, which
// keeps only the latest pending one; it is queued again on every connect.
func (m *mqttLink) publishStatus() {
	state, reasons := m.statusState()
	cfg := m.config()
	id := fmt.Sprintf("status/%s-%s-%d-%d", cfg.Device, m.instance, m.boot, m.now().UnixNano())
	err := m.outbox.Enqueue(context.Background(), feedback.Record{ID: id, Kind: feedback.KindStatus, Topic: m.topic(mqttconn.KindStatus),
		Payload: m.status(state, reasons), QoS: 1, Retain: true})
	if err != nil && !errors.Is(err, feedback.ErrClosed) {
		m.log.Warn("queueing the status failed", "err", err)
	}
}

func (m *mqttLink) run(ctx context.Context) {
	cfg := m.config()
	outbox := m.outbox
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
		AutoAckDisabled: m.subscribe != nil,
		Will:            mqttconn.Will{Topic: m.topic(mqttconn.KindStatus), Payload: m.status("offline", nil), QoS: 1, Retain: true},
	}
	client, err := mqttconn.New(mc, m.log, mqttconn.Hooks{
		OnConnect: func(c mqtt.Client) {
			m.metrics.mqttConnected.Set(1)
			m.setDegraded("mqtt_link", "", false)
			// Our own status topic, to notice another process that
			// publishes as this device (it would take the broker
			// connection from us, and we from it, again and again).
			c.Subscribe(m.topic(mqttconn.KindStatus), 1, m.onStatus)
			if m.subscribe != nil {
				m.subscribe(ctx, c)
			}
			select {
			case m.up <- struct{}{}:
			default:
			}
		},
		OnConnectionLost: func(mqtt.Client, error) {
			m.metrics.mqttConnected.Set(0)
			m.metrics.mqttDisconnects.Inc()
		},
		OnConnectFailed: func(cause string, err error) {
			m.metrics.mqttConnectFailures.WithLabelValues(cause).Inc()
			m.setDegraded("mqtt_link", fmt.Sprintf("%s: %v", cause, err), true)
		},
	})
	if err != nil {
		m.log.Error("mqtt disabled: bad configuration", "err", err)
		m.setDegraded("mqtt_config", err.Error(), true)
		return
	}
	if err := outbox.Start(client); err != nil {
		m.log.Error("mqtt outbox sender failed to start", "err", err)
	}
	m.mu.Lock()
	m.client = client
	m.mu.Unlock()
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := outbox.Close(closeCtx); err != nil {
			m.log.Warn("closing the outbox", "err", err)
		}
		// A clean goodbye: offline retained, then disconnect (the will is
		// only for crashes).
		if client.IsConnectionOpen() {
			t := client.Publish(m.topic(mqttconn.KindStatus), 1, true, m.status("offline", nil))
			t.WaitTimeout(2 * time.Second)
		}
		client.Disconnect(500)
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.up:
			m.publishStatus()
		}
	}
}

// flush waits, within ctx and at most 3 s, for the outbox to drain while
// connected (used at shutdown; what is not acknowledged stays in the
// database for the next start).
func (m *mqttLink) flush(ctx context.Context) {
	deadline := time.Now().Add(3 * time.Second)
	for m.connected() && ctx.Err() == nil && time.Now().Before(deadline) {
		if n, _ := m.outbox.Depth(); n == 0 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}
