// Package mqttconn owns the MQTT connection plumbing shared by the daemon
// and the collector: paho client options built from one Config (broker URL,
// TLS, credentials with environment overrides, persistent session, last
// will, reconnect with backoff) and the topic layout of DESIGN.md §3.
//
// Delivery guarantees do not come from here: paho keeps in-flight messages
// only in memory (its file store has lost QoS1 messages across reconnects,
// paho.mqtt.golang issues #278 and #425). Senders keep their records in the
// SQLite outbox (package feedback) and delete them only after PUBACK.
package mqttconn

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
)

// Environment variables that override Config.Username and Config.Password,
// so that secrets need not be written in the configuration file.
const (
	EnvUsername = "SCOPEWATCH_MQTT_USERNAME"
	EnvPassword = "SCOPEWATCH_MQTT_PASSWORD"
)

// ErrConfig marks an invalid Config; the message names the field.
var ErrConfig = errors.New("invalid mqtt configuration")

// ErrTimeout is returned by Wait when the broker did not answer in time.
var ErrTimeout = errors.New("timed out")

// Wait waits up to timeout for tok to complete and returns its error, or
// ErrTimeout: paho's WaitTimeout alone cannot tell a slow broker from a
// refusal.
func Wait(tok mqtt.Token, timeout time.Duration) error {
	if !tok.WaitTimeout(timeout) {
		return ErrTimeout
	}
	return tok.Error()
}

// Will is the last-will message the broker publishes if the client
// disappears without disconnecting (the "offline" status).
type Will struct {
	Topic   string
	Payload []byte
	QoS     byte
	Retain  bool
}

// Config describes one client connection. Zero durations take defaults.
type Config struct {
	// Broker is tcp://host:port, ssl://host:port (also tls://, mqtts://),
	// ws:// or wss://.
	Broker   string
	ClientID string
	Username string
	Password string
	// CAFile is a PEM bundle trusted for the broker certificate (the system
	// pool when empty); CertFile/KeyFile enable client certificates.
	CAFile, CertFile, KeyFile string
	// ServerName overrides the name checked in the broker certificate.
	ServerName string

	KeepAlive      time.Duration // default 30 s
	ConnectTimeout time.Duration // default 10 s
	// MaxReconnectInterval caps the exponential backoff of reconnects and
	// of the first connection; default 30 s. ConnectRetryInterval is the
	// first-connection backoff's first step; default 2 s.
	MaxReconnectInterval time.Duration
	ConnectRetryInterval time.Duration
	// CleanSession false (the default) keeps the session on the broker so
	// that QoS1 messages for our subscriptions queue while we are away.
	CleanSession bool
	// Will, when Topic is set, is registered as the last will.
	Will Will
	// AutoAckDisabled makes message handlers acknowledge explicitly with
	// msg.Ack(), after they stored the message durably.
	AutoAckDisabled bool
}

// ApplyEnv overrides Username and Password from EnvUsername/EnvPassword
// when those are set (lookup is os.LookupEnv in production).
func (c *Config) ApplyEnv(lookup func(string) (string, bool)) {
	if v, ok := lookup(EnvUsername); ok {
		c.Username = v
	}
	if v, ok := lookup(EnvPassword); ok {
		c.Password = v
	}
}

// Validate checks the fields that can be checked without a network.
func (c Config) Validate() error {
	u, err := url.Parse(c.Broker)
	if err != nil || u.Host == "" {
		return fmt.Errorf("%w: broker %q: want scheme://host:port, e.g. tcp://127.0.0.1:1883", ErrConfig, c.Broker)
	}
	switch u.Scheme {
	case "tcp", "mqtt", "ssl", "tls", "mqtts", "ws", "wss":
	default:
		return fmt.Errorf("%w: broker %q: scheme %q not one of tcp, mqtt, ssl, tls, mqtts, ws, wss", ErrConfig, c.Broker, u.Scheme)
	}
	if c.ClientID == "" {
		return fmt.Errorf("%w: client_id is empty (a persistent session needs a stable id)", ErrConfig)
	}
	if len(c.ClientID) > 128 {
		return fmt.Errorf("%w: client_id longer than 128 bytes", ErrConfig)
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return fmt.Errorf("%w: cert_file and key_file must be set together", ErrConfig)
	}
	if c.Will.Topic != "" {
		if err := ValidateTopic(c.Will.Topic); err != nil {
			return fmt.Errorf("%w: will topic: %v", ErrConfig, err)
		}
		if c.Will.QoS > 2 {
			return fmt.Errorf("%w: will qos %d not in 0..2", ErrConfig, c.Will.QoS)
		}
	}
	return nil
}

// TLSConfig builds the TLS settings from the file fields; it returns nil
// when none is set and the scheme is not a TLS one.
func (c Config) TLSConfig() (*tls.Config, error) {
	if c.CAFile == "" && c.CertFile == "" && c.ServerName == "" {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.ServerName}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("%w: ca_file: %v", ErrConfig, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w: ca_file %s: no PEM certificate found", ErrConfig, c.CAFile)
		}
		tc.RootCAs = pool
	}
	if c.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("%w: cert_file/key_file: %v", ErrConfig, err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// Hooks are optional callbacks. OnConnect runs after every successful
// (re)connection: subscribe there, because a broker that lost its state
// (restart with wiped persistence) no longer knows our subscriptions.
type Hooks struct {
	OnConnect        func(mqtt.Client)
	OnConnectionLost func(mqtt.Client, error)
	// OnConnectFailed is told every failed connection attempt with its
	// cause (see Cause).
	OnConnectFailed func(cause string, err error)
}

// Causes of a failed connection attempt, as Cause names them.
const (
	CauseAuth     = "auth"     // the broker refused the credentials or the client id
	CauseTLS      = "tls"      // certificate or handshake: wrong CA, missing client certificate
	CauseNetwork  = "network"  // no route, refused, timed out, reset
	CauseProtocol = "protocol" // anything else the broker answered
)

// Cause says why a connection attempt failed, in the words an operator
// acts on: the credentials (auth), the certificates (tls), the network.
func Cause(err error) string {
	var (
		unknownCA x509.UnknownAuthorityError
		hostname  x509.HostnameError
		invalid   x509.CertificateInvalidError
		verify    *tls.CertificateVerificationError
		record    tls.RecordHeaderError
		alert     tls.AlertError
	)
	switch {
	case errors.Is(err, packets.ErrorRefusedBadUsernameOrPassword), errors.Is(err, packets.ErrorRefusedNotAuthorised),
		errors.Is(err, packets.ErrorRefusedIDRejected):
		return CauseAuth
	case errors.As(err, &unknownCA), errors.As(err, &hostname), errors.As(err, &invalid), errors.As(err, &verify),
		errors.As(err, &record), errors.As(err, &alert), err != nil && strings.Contains(err.Error(), "tls: "):
		return CauseTLS
	case errors.Is(err, packets.ErrorNetworkError):
		return CauseNetwork
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return CauseNetwork
	}
	return CauseProtocol
}

// Options translates cfg into paho client options: auto-reconnect with
// backoff, connect retry, a memory store, and handlers that do not block
// paho's network loop ordering (OrderMatters false) unless
// AutoAckDisabled, where acknowledging in order matters.
func Options(cfg Config, log *slog.Logger, hooks Hooks) (*mqtt.ClientOptions, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	tc, err := cfg.TLSConfig()
	if err != nil {
		return nil, err
	}
	o := mqtt.NewClientOptions().
		AddBroker(cfg.Broker).
		SetClientID(cfg.ClientID).
		SetCleanSession(cfg.CleanSession).
		SetStore(mqtt.NewMemoryStore()).
		SetKeepAlive(orDefault(cfg.KeepAlive, 30*time.Second)).
		SetPingTimeout(10 * time.Second).
		SetConnectTimeout(orDefault(cfg.ConnectTimeout, 10*time.Second)).
		SetWriteTimeout(10 * time.Second).
		SetAutoReconnect(true).
		SetMaxReconnectInterval(orDefault(cfg.MaxReconnectInterval, 30*time.Second)).
		SetConnectRetry(true).
		SetConnectRetryInterval(orDefault(cfg.ConnectRetryInterval, 2*time.Second)).
		SetResumeSubs(true).
		// 3.1.1 only: a refused attempt is not tried again as 3.1, which
		// doubled every failure (and its log line).
		SetProtocolVersion(4).
		SetOrderMatters(cfg.AutoAckDisabled).
		SetAutoAckDisabled(cfg.AutoAckDisabled)
	if cfg.Username != "" {
		o.SetUsername(cfg.Username)
		o.SetPassword(cfg.Password)
	}
	if tc != nil {
		o.SetTLSConfig(tc)
	}
	if cfg.Will.Topic != "" {
		o.SetBinaryWill(cfg.Will.Topic, cfg.Will.Payload, cfg.Will.QoS, cfg.Will.Retain)
	}
	broker := redact(cfg.Broker)
	o.SetOnConnectHandler(func(c mqtt.Client) {
		log.Info("mqtt connected", "broker", broker, "client_id", cfg.ClientID)
		if hooks.OnConnect != nil {
			hooks.OnConnect(c)
		}
	})
	o.SetConnectionLostHandler(func(c mqtt.Client, err error) {
		log.Warn("mqtt connection lost", "broker", broker, "err", err)
		if hooks.OnConnectionLost != nil {
			hooks.OnConnectionLost(c, err)
		}
	})
	o.SetReconnectingHandler(func(mqtt.Client, *mqtt.ClientOptions) {
		log.Debug("mqtt reconnecting", "broker", broker)
	})
	// Every failed attempt is reported with its cause; the log says it at
	// warn when the cause changes and then once a minute with a count, so a
	// wrong password is visible at once without a line every second.
	var (
		failMu    sync.Mutex
		lastCause string
		lastLog   time.Time
		failures  int
		// dialFailed: this attempt's failure was already told.
		dialFailed bool
	)
	tlsBroker := tc != nil
	if u, err := url.Parse(cfg.Broker); err == nil {
		switch u.Scheme {
		case "ssl", "tls", "mqtts", "tcps", "wss":
			tlsBroker = true
		}
	}
	failed := func(err error, afterDial bool) {
		cause := Cause(err)
		if cause == CauseNetwork && afterDial && tlsBroker {
			// With TLS 1.3 the broker checks the client certificate after
			// the client's side of the handshake is done; its refusal then
			// shows as a reset or an alert, whichever comes first.
			cause = CauseTLS
			err = fmt.Errorf("the broker closed the connection after the TLS handshake (does it accept this client certificate?): %w", err)
		}
		failMu.Lock()
		failures++
		n := failures
		logNow := cause != lastCause || time.Since(lastLog) >= time.Minute
		if logNow {
			lastCause, lastLog, failures = cause, time.Now(), 0
		}
		failMu.Unlock()
		if logNow {
			log.Warn("mqtt connection failed", "broker", broker, "cause", cause, "err", err, "failures_since_last_line", n)
		}
		if hooks.OnConnectFailed != nil {
			hooks.OnConnectFailed(cause, err)
		}
	}
	o.SetConnectionNotificationHandler(func(_ mqtt.Client, n mqtt.ConnectionNotification) {
		switch n := n.(type) {
		case mqtt.ConnectionNotificationConnecting:
			failMu.Lock()
			dialFailed = false
			failMu.Unlock()
		case mqtt.ConnectionNotificationBrokerFailed:
			failMu.Lock()
			dialFailed = true
			failMu.Unlock()
			failed(n.Reason, false)
		case mqtt.ConnectionNotificationFailed:
			// A dial failure of this attempt was told as BrokerFailed;
			// what failed after the dial (TLS alerts, CONNACK refusals)
			// is told here.
			failMu.Lock()
			told := dialFailed
			failMu.Unlock()
			if !told {
				failed(n.Reason, true)
			}
		case mqtt.ConnectionNotificationConnected:
			failMu.Lock()
			lastCause, failures = "", 0
			failMu.Unlock()
		}
	})
	return o, nil
}

// New builds the client and starts connecting in the background; with
// ConnectRetry it keeps trying until Disconnect, so a broker that is down
// at boot is not an error. It does not wait for the connection.
//
// Connection attempts back off exponentially from
// ConnectRetryInterval to MaxReconnectInterval with ±20% jitter, so that a
// fleet refused by its broker (a wrong password after a rotation, a broker
// restart) does not hammer it in step; so do reconnects after a lost
// connection. Disconnect stops the attempts.
func New(cfg Config, log *slog.Logger, hooks Hooks) (mqtt.Client, error) {
	o, err := Options(cfg, log, hooks)
	if err != nil {
		return nil, err
	}
	// Reconnects after a lost connection take the same jittered backoff as
	// the first connection (paho's own reconnect doubles its interval in
	// step across a fleet): paho's is off, and a lost connection starts
	// the loop again.
	o.SetConnectRetry(false)
	o.SetAutoReconnect(false)
	c := &client{stop: make(chan struct{}),
		first: orDefault(cfg.ConnectRetryInterval, 2*time.Second), limit: orDefault(cfg.MaxReconnectInterval, 30*time.Second),
		rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(len(cfg.ClientID))))}
	lost := o.OnConnectionLost
	o.SetConnectionLostHandler(func(cl mqtt.Client, err error) {
		if lost != nil {
			lost(cl, err)
		}
		go c.connect()
	})
	c.Client = mqtt.NewClient(o)
	go c.connect()
	return c, nil
}

// client is a paho client whose connections (the first, and every one
// after a loss) are retried with jittered exponential backoff until one
// succeeds or Disconnect is called.
type client struct {
	mqtt.Client
	stop         chan struct{}
	stopOnce     sync.Once
	first, limit time.Duration
	mu           sync.Mutex // guards rng and connecting
	rng          *rand.Rand
	connecting   bool
}

func (c *client) connect() {
	c.mu.Lock()
	if c.connecting {
		c.mu.Unlock()
		return
	}
	c.connecting = true
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.connecting = false
		c.mu.Unlock()
	}()
	wait := c.first
	for {
		select {
		case <-c.stop:
			return
		default:
		}
		tok := c.Client.Connect()
		tok.Wait()
		select {
		case <-c.stop:
			if tok.Error() == nil {
				c.Client.Disconnect(0) // connected after Disconnect was asked
			}
			return
		default:
		}
		if tok.Error() == nil {
			return
		}
		c.mu.Lock()
		jittered := time.Duration(float64(wait) * (0.8 + 0.4*c.rng.Float64()))
		c.mu.Unlock()
		select {
		case <-c.stop:
			return
		case <-time.After(jittered):
		}
		wait = min(2*wait, c.limit)
	}
}

// Disconnect stops the first-connection attempts and disconnects.
func (c *client) Disconnect(quiesce uint) {
	c.stopOnce.Do(func() { close(c.stop) })
	c.Client.Disconnect(quiesce)
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

func redact(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "?"
	}
	return u.Redacted()
}
