package mqttconn

import (
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/scopewatch/scopewatch/internal/testutil"
)

func TestTopics(t *testing.T) {
	custom, err := NewTopics("acme/scopewatch/v1/")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		topics Topics
		root   string
	}{
		{"zero value", Topics{}, "scopewatch/v1"},
		{"custom root", custom, "acme/scopewatch/v1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tp, r := tc.topics, tc.root
			if got, err := tp.Device("lab-1", "scope_07", KindFeedback); err != nil || got != r+"/lab-1/scope_07/feedback" {
				t.Fatalf("Device = %q, %v", got, err)
			}
			if got, _ := tp.RetuneRequest("lab-1"); got != r+"/lab-1/retune/request" {
				t.Fatalf("RetuneRequest = %q", got)
			}
			if got, _ := tp.ModelOffer("lab-1"); got != r+"/lab-1/model/offer" {
				t.Fatalf("ModelOffer = %q", got)
			}
			if got, _ := tp.RetuneEvent("lab-1"); got != r+"/lab-1/retune/event" {
				t.Fatalf("RetuneEvent = %q", got)
			}
			if got, _ := tp.RetuneRequestFilter(""); got != r+"/+/retune/request" {
				t.Fatalf("RetuneRequestFilter = %q", got)
			}
			if got, _ := tp.RetuneRequestFilter("tuners"); got != "$share/tuners/"+r+"/+/retune/request" {
				t.Fatalf("RetuneRequestFilter(tuners) = %q", got)
			}
			if site, err := tp.ParseRetuneRequest(r + "/lab-1/retune/request"); err != nil || site != "lab-1" {
				t.Fatalf("ParseRetuneRequest = %q, %v", site, err)
			}
			for _, bad := range []string{r + "/lab-1/retune/event", r + "/Lab/retune/request", r + "/lab/x/retune/request", "other/lab/retune/request"} {
				if _, err := tp.ParseRetuneRequest(bad); err == nil {
					t.Errorf("ParseRetuneRequest(%q) accepted", bad)
				}
			}
			// A chunk topic has 5 levels under the root: with a root of
			// more than 2 it passes the 7-level limit, and is refused.
			got, err := tp.ModelChunk("lab-1", "2026.12.03-1_0a1b2c3d", 7)
			if strings.Count(r, "/") <= 1 && (err != nil || got != r+"/lab-1/model/chunk/2026.12.03-1_0a1b2c3d/7") {
				t.Fatalf("ModelChunk = %q, %v", got, err)
			}
			if strings.Count(r, "/") > 1 && !errors.Is(err, ErrTopic) {
				t.Fatalf("ModelChunk under a 3-level root = %q, %v; want ErrTopic", got, err)
			}
			if got, _ := tp.SharedFilter("tuners", KindFeedback); got != "$share/tuners/"+r+"/+/+/feedback" {
				t.Fatalf("SharedFilter = %q", got)
			}
			s, d, k, err := tp.ParseDevice(r + "/lab/dev/label")
			if err != nil || s != "lab" || d != "dev" || k != KindLabel {
				t.Fatalf("ParseDevice = %q %q %q %v", s, d, k, err)
			}
			for _, bad := range []string{r + "/lab/dev", "other/v1/lab/dev/label", r + "/Lab/dev/label", r + "/lab/dev/label/x"} {
				if _, _, _, err := tp.ParseDevice(bad); err == nil {
					t.Errorf("ParseDevice(%q) accepted", bad)
				}
			}
		})
	}
	// The default root's chunk topic reaches the level limit exactly; a
	// three-level root makes it one level too deep, which must be refused.
	if got, _ := (Topics{}).ModelChunk("lab-1", "2026.11.1", 3); got != "scopewatch/v1/lab-1/model/chunk/2026.11.1/3" {
		t.Fatalf("ModelChunk = %q", got)
	}
	if _, err := custom.ModelChunk("lab-1", "2026.11.1", 3); !errors.Is(err, ErrTopic) {
		t.Errorf("ModelChunk under a three-level root: %v, want ErrTopic", err)
	}
	if _, _, _, err := custom.ParseDevice("scopewatch/v1/lab/dev/label"); err == nil {
		t.Error("custom root parsed a default-root topic")
	}
	for _, bad := range []struct{ site, device string }{
		{"Lab", "d"}, {"lab", "d/e"}, {"lab", "+"}, {"#", "d"}, {"", "d"}, {"lab", "dé"},
	} {
		if _, err := (Topics{}).Device(bad.site, bad.device, KindAlert); !errors.Is(err, ErrTopic) {
			t.Errorf("Device(%q,%q) accepted", bad.site, bad.device)
		}
	}
	if _, err := (Topics{}).Device("a", "b", Kind("nope")); !errors.Is(err, ErrTopic) {
		t.Error("unknown kind accepted")
	}
	for _, bad := range []string{"", "a/b/c/d", "a/+", "A", "a//b", "$sys"} {
		if _, err := NewTopics(bad); !errors.Is(err, ErrTopic) {
			t.Errorf("NewTopics(%q) accepted", bad)
		}
	}
	for _, bad := range []string{"", "a/b/c/d/e/f/g/h", "a/+/b", "a/#", "A/b", "a//b", "$sys/x", "/a"} {
		if ValidateTopic(bad) == nil {
			t.Errorf("ValidateTopic(%q) accepted", bad)
		}
	}
}

func TestValidateAndEnv(t *testing.T) {
	good := Config{Broker: "tcp://127.0.0.1:1883", ClientID: "dev"}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]Config{
		"no scheme":  {Broker: "127.0.0.1:1883", ClientID: "x"},
		"bad scheme": {Broker: "http://h:1", ClientID: "x"},
		"no id":      {Broker: "tcp://h:1"},
		"cert only":  {Broker: "tcp://h:1", ClientID: "x", CertFile: "c.pem"},
		"will topic": {Broker: "tcp://h:1", ClientID: "x", Will: Will{Topic: "a/+"}},
	} {
		if err := c.Validate(); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: Validate = %v, want ErrConfig", name, err)
		}
	}
	if _, err := (Config{Broker: "ssl://h:1", ClientID: "x", CAFile: "/nonexistent.pem"}).TLSConfig(); !errors.Is(err, ErrConfig) {
		t.Errorf("missing CA file: %v", err)
	}
	env := map[string]string{EnvUsername: "u", EnvPassword: "p"}
	c := good
	c.Username = "file-user"
	c.ApplyEnv(func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if c.Username != "u" || c.Password != "p" {
		t.Fatalf("env override: %+v", c)
	}
}

// The broker publishes the will when the link dies, and OnConnect runs
// again after a broker restart so subscriptions can be renewed.
func TestWillAndReconnect(t *testing.T) {
	b := testutil.StartMosquitto(t)
	p := testutil.StartProxy(t, b.Addr())
	var connects atomic.Int32
	c, err := New(Config{
		Broker: p.URL(), ClientID: "dev-1", KeepAlive: 2 * time.Second,
		MaxReconnectInterval: 200 * time.Millisecond, ConnectRetryInterval: 100 * time.Millisecond,
		Will: Will{Topic: "scopewatch/v1/lab/dev-1/status", Payload: []byte(`{"state":"offline"}`), QoS: 1, Retain: true},
	}, nil, Hooks{OnConnect: func(mqtt.Client) { connects.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Disconnect(100)
	testutil.Eventually(t, 10*time.Second, func() bool { return connects.Load() == 1 }, "no first connect")

	watcher := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(b.URL()).SetClientID("watcher"))
	if tok := watcher.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer watcher.Disconnect(50)
	wills := make(chan string, 4)
	watcher.Subscribe("scopewatch/v1/lab/dev-1/status", 1, func(_ mqtt.Client, m mqtt.Message) { wills <- string(m.Payload()) })

	p.Cut()
	select {
	case w := <-wills:
		if w != `{"state":"offline"}` {
			t.Fatalf("will payload %q", w)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("no last will after the link was cut")
	}
	p.Restore()
	testutil.Eventually(t, 10*time.Second, func() bool { return connects.Load() == 2 }, "no reconnect after restore")
}

func TestTLSWithClientCertificate(t *testing.T) {
	b, files := testutil.StartMosquittoTLS(t)
	other := testutil.NewTLSFiles(t, t.TempDir())
	try := func(cfg Config) error {
		cfg.Broker, cfg.ConnectTimeout = b.TLSURL(), 3*time.Second
		o, err := Options(cfg, nil, Hooks{})
		if err != nil {
			return err
		}
		o.SetConnectRetry(false).SetAutoReconnect(false)
		c := mqtt.NewClient(o)
		tok := c.Connect()
		if !tok.WaitTimeout(5 * time.Second) {
			return errors.New("timeout")
		}
		if tok.Error() == nil {
			c.Disconnect(50)
		}
		return tok.Error()
	}
	if err := try(Config{ClientID: "tls-ok", CAFile: files.CA, CertFile: files.ClientCert, KeyFile: files.ClientKey}); err != nil {
		t.Fatalf("TLS with client certificate: %v\n%s", err, b.Log())
	}
	if err := try(Config{ClientID: "tls-nocert", CAFile: files.CA}); err == nil {
		t.Fatal("broker accepted a client without certificate")
	}
	if err := try(Config{ClientID: "tls-wrongca", CAFile: other.CA, CertFile: files.ClientCert, KeyFile: files.ClientKey}); err == nil {
		t.Fatal("client trusted a broker certificate from another CA")
	}
}

// A wrong password, a wrong CA and a missing client certificate are each
// reported with their cause within 5 s, in the log and to the hook, while
// the client keeps retrying.
func TestConnectFailuresNameTheirCause(t *testing.T) {
	tlsBroker, files := testutil.StartMosquittoTLS(t)
	other := testutil.NewTLSFiles(t, t.TempDir())
	pwDir := t.TempDir()
	pwFile := filepath.Join(pwDir, "passwd")
	if out, err := exec.Command("/usr/bin/mosquitto_passwd", "-b", "-c", pwFile, "scope", "right").CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_passwd: %v %s", err, out)
	}
	os.Chmod(pwFile, 0o644)
	authBroker := testutil.StartMosquitto(t, testutil.WithConfig("allow_anonymous false", "password_file "+pwFile))

	cases := []struct {
		name  string
		cfg   Config
		cause string
	}{
		{"wrong password", Config{Broker: authBroker.URL(), Username: "scope", Password: "wrong"}, CauseAuth},
		{"wrong CA", Config{Broker: tlsBroker.TLSURL(), CAFile: other.CA, CertFile: files.ClientCert, KeyFile: files.ClientKey}, CauseTLS},
		{"missing client certificate", Config{Broker: tlsBroker.TLSURL(), CAFile: files.CA}, CauseTLS},
		{"nobody listening", Config{Broker: "tcp://127.0.0.1:1"}, CauseNetwork},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var logs syncBuf
			log := slog.New(slog.NewTextHandler(&logs, nil))
			got := make(chan string, 100)
			c.cfg.ClientID = "cause-" + strings.ReplaceAll(c.name, " ", "-")
			c.cfg.ConnectTimeout, c.cfg.ConnectRetryInterval = 2*time.Second, 200*time.Millisecond
			client, err := New(c.cfg, log, Hooks{OnConnectFailed: func(cause string, err error) {
				select {
				case got <- cause:
				default:
				}
			}})
			if err != nil {
				t.Fatal(err)
			}
			defer client.Disconnect(50)
			select {
			case cause := <-got:
				if cause != c.cause {
					t.Fatalf("cause %q, want %q (log: %s)", cause, c.cause, logs.String())
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("no failure reported within 5 s (log: %s)", logs.String())
			}
			testutil.Eventually(t, 2*time.Second, func() bool {
				return strings.Contains(logs.String(), "mqtt connection failed") && strings.Contains(logs.String(), "cause="+c.cause)
			}, "the log names the cause: %s", logs.String())
		})
	}
}

type syncBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Refused first connections back off exponentially (not one attempt per
// interval forever), and Disconnect stops them.
func TestFirstConnectionBacksOff(t *testing.T) {
	var mu sync.Mutex
	var at []time.Time
	c, err := New(Config{Broker: "tcp://127.0.0.1:1", ClientID: "backoff", ConnectRetryInterval: 100 * time.Millisecond,
		MaxReconnectInterval: 5 * time.Second}, nil, Hooks{OnConnectFailed: func(string, error) {
		mu.Lock()
		at = append(at, time.Now())
		mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(2500 * time.Millisecond)
	c.Disconnect(0)
	mu.Lock()
	n := len(at)
	gaps := make([]time.Duration, 0, n)
	for i := 1; i < n; i++ {
		gaps = append(gaps, at[i].Sub(at[i-1]))
	}
	mu.Unlock()
	// 100 ms doubling: about 5 attempts in 2.5 s; a fixed 100 ms would be 25.
	if n < 3 || n > 8 {
		t.Fatalf("%d attempts in 2.5 s (gaps %v), want an exponential backoff", n, gaps)
	}
	if gaps[len(gaps)-1] < 2*gaps[0] {
		t.Fatalf("gaps %v do not grow", gaps)
	}
	time.Sleep(time.Second)
	mu.Lock()
	defer mu.Unlock()
	if len(at) != n {
		t.Fatalf("attempts went on after Disconnect: %d then %d", n, len(at))
	}
}

// TestReconnectBacksOff: after a lost connection, while the broker stays
// unreachable, attempts back off as the first connection's do (paho's own
// reconnect would run in step across a fleet), and the link comes back
// when the broker does.
func TestReconnectBacksOff(t *testing.T) {
	b := testutil.StartMosquitto(t)
	p := testutil.StartProxy(t, b.Addr())
	var connects atomic.Int32
	var mu sync.Mutex
	var failed []time.Time
	c, err := New(Config{Broker: p.URL(), ClientID: "reconnect-backoff", KeepAlive: 2 * time.Second,
		ConnectRetryInterval: 100 * time.Millisecond, MaxReconnectInterval: 5 * time.Second}, nil,
		Hooks{OnConnect: func(mqtt.Client) { connects.Add(1) }, OnConnectFailed: func(string, error) {
			mu.Lock()
			failed = append(failed, time.Now())
			mu.Unlock()
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Disconnect(100)
	testutil.Eventually(t, 10*time.Second, func() bool { return connects.Load() == 1 }, "no first connect")
	p.Cut()
	testutil.Eventually(t, 15*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(failed) > 0 }, "no reconnect attempt after the cut")
	time.Sleep(2500 * time.Millisecond)
	mu.Lock()
	n := len(failed)
	gaps := make([]time.Duration, 0, n)
	for i := 1; i < n; i++ {
		gaps = append(gaps, failed[i].Sub(failed[i-1]))
	}
	mu.Unlock()
	if n < 3 || n > 9 || gaps[len(gaps)-1] < 2*gaps[0] {
		t.Fatalf("%d attempts in about 2.5 s after the loss, gaps %v: want an exponential backoff", n, gaps)
	}
	p.Restore()
	testutil.Eventually(t, 15*time.Second, func() bool { return connects.Load() == 2 }, "no reconnect after the broker came back")
}
