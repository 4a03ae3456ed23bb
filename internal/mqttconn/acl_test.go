package mqttconn

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/scopewatch/scopewatch/internal/testutil"
)

// These tests run a real mosquitto with the shipped broker set-up,
// systemd/mosquitto: scopewatch.conf with only its port and file paths
// replaced, and the ACL that scopewatch-acl.sh writes. Every client has its
// own certificate from one CA, and every topic comes from Topics, so the
// ACL is checked against what the daemon and the fleet services really
// publish and subscribe to.
//
// mosquitto drops a publish the ACL refuses and still acknowledges it
// (MQTT 3.1.1 has no way to say no), and it accepts a subscription the ACL
// refuses and then delivers nothing on it. So a refusal is asserted as
// non-delivery, after a control message proves that the path works: the
// broker decides on a publish before it acknowledges it and queues what it
// delivers to a client in order, so once a control sent after the
// acknowledgement has arrived, a message that was let through would have
// arrived before it.

const shippedMosquitto = "../../systemd/mosquitto"

const (
	devA1     = "lab-a.dev-1" // certificate CNs, as the README tells to issue them
	devA2     = "lab-a.dev-2"
	devB1     = "lab-b.dev-1" // same device name as devA1, other site
	collector = "scopewatch-collector"
	tuner     = "scopewatch-tuner"
	labeller  = "scopewatch-labeller"
	monitor   = "scopewatch-monitor"
	stranger  = "lab-c.dev-9" // a certificate from the CA, not in the list
	// auditor is a test-only identity that may read and write everything:
	// it sees every message the broker accepts, which tells a refused
	// publish from one that was accepted but not delivered to a reader.
	auditor = "test-auditor"
)

const identities = `# the test fleet
device    lab-a dev-1
device    lab-a dev-2
device    lab-b dev-1
collector scopewatch-collector
tuner     scopewatch-tuner
labeller  scopewatch-labeller
monitor   scopewatch-monitor
`

type aclBroker struct {
	*testutil.Broker
	tls     *testutil.TLSFiles
	aclPath string
	certs   map[string][2]string // CN -> certificate, key
	mu      sync.Mutex
	clients int
}

// startShippedBroker writes the ACL for list and starts mosquitto with the
// shipped scopewatch.conf.
func startShippedBroker(t *testing.T, list string) *aclBroker {
	t.Helper()
	dir := t.TempDir()
	a := &aclBroker{tls: testutil.NewTLSFiles(t, dir), aclPath: filepath.Join(dir, "scopewatch.acl"), certs: map[string][2]string{}}
	for _, cn := range []string{devA1, devA2, devB1, collector, tuner, labeller, monitor, stranger, auditor} {
		c, k := a.tls.IssueClient(t, cn)
		a.certs[cn] = [2]string{c, k}
	}
	a.writeACL(t, list)
	conf, err := os.ReadFile(filepath.Join(shippedMosquitto, "scopewatch.conf"))
	if err != nil {
		t.Fatal(err)
	}
	a.Broker = testutil.StartMosquitto(t, testutil.WithListenerConfig(func(port int) string {
		return renderConf(t, string(conf), map[string]string{
			"listener": fmt.Sprintf("%d 127.0.0.1", port),
			"acl_file": a.aclPath,
			"cafile":   a.tls.CA, "certfile": a.tls.ServerCert, "keyfile": a.tls.ServerKey,
		})
	}))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("mosquitto log:\n%s", a.Log())
		}
	})
	return a
}

// renderConf replaces the values of the named directives, each of which
// must appear exactly once, and keeps every other line as shipped.
func renderConf(t *testing.T, conf string, values map[string]string) string {
	t.Helper()
	seen := map[string]int{}
	lines := strings.Split(conf, "\n")
	for i, l := range lines {
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		if v, ok := values[f[0]]; ok {
			lines[i] = f[0] + " " + v
			seen[f[0]]++
		}
	}
	for k := range values {
		if seen[k] != 1 {
			t.Fatalf("scopewatch.conf: directive %q appears %d times, want once", k, seen[k])
		}
	}
	return strings.Join(lines, "\n")
}

// runACLScript runs the shipped generator on list and returns its output.
func runACLScript(list string, args ...string) (stdout, stderr string, err error) {
	cmd := exec.Command(filepath.Join(shippedMosquitto, "scopewatch-acl.sh"), args...)
	cmd.Stdin = strings.NewReader(list)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

func (a *aclBroker) writeACL(t *testing.T, list string) {
	t.Helper()
	acl, stderr, err := runACLScript(list)
	if err != nil {
		t.Fatalf("scopewatch-acl.sh: %v: %s", err, stderr)
	}
	acl += "\n# test only\nuser " + auditor + "\ntopic readwrite #\n"
	if err := os.WriteFile(a.aclPath, []byte(acl), 0o644); err != nil {
		t.Fatal(err)
	}
}

// peer is one connected client that records every message it receives.
type peer struct {
	cn string
	id string // client id
	c  mqtt.Client
	mu sync.Mutex
	// got maps payload to topic.
	got map[string]string
}

// connect connects as cn with its certificate; edit, if not nil, changes
// the configuration first.
func (a *aclBroker) connect(t *testing.T, cn string, edit func(*Config)) *peer {
	t.Helper()
	a.mu.Lock()
	a.clients++
	id := fmt.Sprintf("acl-%d-%s", a.clients, cn)
	a.mu.Unlock()
	cfg := Config{Broker: a.TLSURL(), ClientID: id, CAFile: a.tls.CA, CertFile: a.certs[cn][0], KeyFile: a.certs[cn][1],
		CleanSession: true, ConnectTimeout: 5 * time.Second}
	if edit != nil {
		edit(&cfg)
	}
	p := &peer{cn: cn, id: id, got: map[string]string{}}
	o, err := Options(cfg, nil, Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	// In order: the control-message argument needs messages handled in the
	// order they arrive.
	o.SetConnectRetry(false).SetAutoReconnect(false).SetOrderMatters(true).
		SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) { p.record(m) })
	p.c = mqtt.NewClient(o)
	if err := Wait(p.c.Connect(), 10*time.Second); err != nil {
		t.Fatalf("%s connects with its certificate: %v", cn, err)
	}
	t.Cleanup(func() { p.c.Disconnect(50) })
	return p
}

func (p *peer) record(m mqtt.Message) {
	p.mu.Lock()
	p.got[string(m.Payload())] = m.Topic()
	p.mu.Unlock()
}

func (p *peer) subscribe(t *testing.T, filters ...string) {
	t.Helper()
	fs := map[string]byte{}
	for _, f := range filters {
		fs[f] = 1
	}
	if err := Wait(p.c.SubscribeMultiple(fs, func(_ mqtt.Client, m mqtt.Message) { p.record(m) }), 5*time.Second); err != nil {
		t.Fatalf("%s subscribes %v: %v", p.cn, filters, err)
	}
}

func (p *peer) unsubscribe(t *testing.T, filters ...string) {
	t.Helper()
	if err := Wait(p.c.Unsubscribe(filters...), 5*time.Second); err != nil {
		t.Fatalf("%s unsubscribes %v: %v", p.cn, filters, err)
	}
}

// publish sends at QoS 1 and waits for the PUBACK: a refused publish is
// acknowledged too, and a publish that failed for another reason must not
// pass for a refused one.
func (p *peer) publish(t *testing.T, topic, payload string, retained bool) {
	t.Helper()
	if err := Wait(p.c.Publish(topic, 1, retained, payload), 5*time.Second); err != nil {
		t.Fatalf("%s publishes on %s: %v", p.cn, topic, err)
	}
}

func (p *peer) has(payload string) (string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	topic, ok := p.got[payload]
	return topic, ok
}

func (p *peer) await(t *testing.T, payload, what string) {
	t.Helper()
	if !testutil.WaitFor(5*time.Second, func() bool { _, ok := p.has(payload); return ok }) {
		t.Fatalf("%s did not receive %s (%q) within 5 s", p.cn, what, payload)
	}
}

// fleet is every identity connected, with the subscriptions the fleet
// services make (through the same Topics calls they use).
type fleet struct {
	*aclBroker
	tp    Topics
	peers map[string]*peer
	seq   int
}

func startFleet(t *testing.T) *fleet {
	t.Helper()
	f := &fleet{aclBroker: startShippedBroker(t, identities), peers: map[string]*peer{}}
	for _, cn := range []string{devA1, devA2, devB1, collector, tuner, labeller, monitor, stranger, auditor} {
		f.peers[cn] = f.connect(t, cn, nil)
	}
	must := func(s string, err error) string {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	tp := f.tp
	// The collector as `scopewatch collect --share collectors`; the tuner
	// as `scopewatch tune worker --share tuners`, which also collects.
	f.peers[collector].subscribe(t, must(tp.SharedFilter("collectors", KindFeedback)), must(tp.SharedFilter("", KindLabel)))
	f.peers[tuner].subscribe(t, must(tp.RetuneRequestFilter("tuners")), must(tp.SharedFilter("", KindFeedback)), must(tp.SharedFilter("", KindLabel)))
	f.peers[monitor].subscribe(t, must(tp.SharedFilter("", KindStatus)), must(tp.SharedFilter("", KindAlert)),
		must(tp.SharedFilter("", KindResult)), tp.Root()+"/+/retune/event", tp.Root()+"/+/model/offer")
	// Each device watches its own status, as the daemon does; that is
	// also its control topic below.
	for _, d := range []string{devA1, devA2, devB1} {
		site, dev, _ := strings.Cut(d, ".")
		f.peers[d].subscribe(t, must(tp.Device(site, dev, KindStatus)))
	}
	f.peers[auditor].subscribe(t, "#")
	return f
}

func (f *fleet) payload(name string) string {
	f.seq++
	return fmt.Sprintf("%s #%d", name, f.seq)
}

// control proves that everything queued for reader so far has arrived: a
// message reader may read, sent now, is received.
func (f *fleet) control(t *testing.T, reader string) {
	t.Helper()
	var from, topic string
	switch reader {
	case devA1, devA2, devB1:
		site, dev, _ := strings.Cut(reader, ".")
		from, topic = reader, f.topic(t, site, dev, KindStatus)
	case collector, tuner:
		from, topic = devA1, f.topic(t, "lab-a", "dev-1", KindFeedback)
	case monitor:
		from, topic = devA1, f.topic(t, "lab-a", "dev-1", KindResult)
	case auditor:
		from, topic = auditor, "acl-test/control"
	default:
		t.Fatalf("no control for %s", reader)
	}
	p := f.payload("control for " + reader)
	f.peers[from].publish(t, topic, p, false)
	f.peers[reader].await(t, p, "the control message")
}

func (f *fleet) topic(t *testing.T, site, device string, kind Kind) string {
	t.Helper()
	s, err := f.tp.Device(site, device, kind)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (f *fleet) siteTopic(t *testing.T, build func(string) (string, error), site string) string {
	t.Helper()
	s, err := build(site)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (f *fleet) chunk(t *testing.T, site string) string {
	t.Helper()
	s, err := f.tp.ModelChunk(site, "2026.12.01-1", 0)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Who may publish where: a device only under its own {site}/{device} and
// its site's retune request; the tuner only offers, chunks and retune
// events; the labeller only labels; the collector and the monitor nothing.
// An allowed message reaches the fleet identity that reads it.
func TestShippedACLPublish(t *testing.T) {
	f := startFleet(t)
	tp := f.tp
	offer, chunk, event, request := tp.ModelOffer, f.chunk, tp.RetuneEvent, tp.RetuneRequest
	dev := func(site, device string, k Kind) string { return f.topic(t, site, device, k) }
	site := func(b func(string) (string, error), s string) string { return f.siteTopic(t, b, s) }
	cases := []struct {
		name   string
		from   string
		topic  string
		retain bool
		// to is who must receive it; "" for a refused publish.
		to string
	}{
		{"device status", devA1, dev("lab-a", "dev-1", KindStatus), true, monitor},
		{"device alert", devA1, dev("lab-a", "dev-1", KindAlert), false, monitor},
		{"device result", devA1, dev("lab-a", "dev-1", KindResult), false, monitor},
		{"device feedback, shared subscription", devA1, dev("lab-a", "dev-1", KindFeedback), false, collector},
		{"device feedback to the collecting tuner", devB1, dev("lab-b", "dev-1", KindFeedback), false, tuner},
		{"device retune request, shared subscription", devA1, site(request, "lab-a"), false, tuner},
		{"tuner offer", tuner, site(offer, "lab-b"), true, monitor},
		{"tuner chunk", tuner, chunk(t, "lab-b"), true, auditor},
		{"tuner retune event", tuner, site(event, "lab-a"), false, monitor},
		{"labeller label", labeller, dev("lab-b", "dev-1", KindLabel), false, collector},

		{"device as another device of its site", devA1, dev("lab-a", "dev-2", KindStatus), true, ""},
		{"device result as another device of its site", devA1, dev("lab-a", "dev-2", KindResult), false, ""},
		{"device as the same-named device of another site", devA1, dev("lab-b", "dev-1", KindResult), false, ""},
		{"device feedback of another site", devA1, dev("lab-b", "dev-1", KindFeedback), false, ""},
		{"device retune request for another site", devA1, site(request, "lab-b"), false, ""},
		{"device forges its own label", devA1, dev("lab-a", "dev-1", KindLabel), false, ""},
		{"device offers a model", devA1, site(offer, "lab-a"), true, ""},
		{"device sends a chunk", devA1, chunk(t, "lab-a"), true, ""},
		{"device sends a retune event", devA1, site(event, "lab-a"), false, ""},
		{"tuner as a device", tuner, dev("lab-a", "dev-1", KindResult), false, ""},
		{"tuner asks for a retune", tuner, site(request, "lab-a"), false, ""},
		{"labeller offers a model", labeller, site(offer, "lab-a"), true, ""},
		{"collector labels", collector, dev("lab-a", "dev-1", KindLabel), false, ""},
		{"monitor as a device", monitor, dev("lab-a", "dev-1", KindStatus), true, ""},
		{"unlisted certificate under its own name", stranger, dev("lab-c", "dev-9", KindStatus), true, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := f.payload(c.name)
			if c.retain {
				// A retained message from an earlier case is not a
				// delivery of this one; clear it at the end.
				defer f.peers[auditor].publish(t, c.topic, "", true)
			}
			f.peers[c.from].publish(t, c.topic, p, c.retain)
			if c.to != "" {
				f.peers[c.to].await(t, p, "an allowed publish from "+c.from)
				return
			}
			f.control(t, auditor)
			if topic, ok := f.peers[auditor].has(p); ok {
				t.Fatalf("the broker accepted %s publishing on %s", c.from, topic)
			}
		})
	}
}

// Who may read what: a device its own labels and status and its site's
// offers and chunks, nothing of another device or site, whatever filter it
// subscribes with; retained messages included.
func TestShippedACLRead(t *testing.T) {
	f := startFleet(t)
	tp, root := f.tp, f.tp.Root()
	dev := func(site, device string, k Kind) string { return f.topic(t, site, device, k) }
	offerA, offerB := f.siteTopic(t, tp.ModelOffer, "lab-a"), f.siteTopic(t, tp.ModelOffer, "lab-b")
	cases := []struct {
		name   string
		reader string
		filter string
		from   string
		topic  string
		// retained: published before the reader subscribes.
		retained bool
		allowed  bool
	}{
		{"device its own label", devA1, dev("lab-a", "dev-1", KindLabel), labeller, dev("lab-a", "dev-1", KindLabel), false, true},
		{"device its site's offer, retained", devA1, offerA, tuner, offerA, true, true},
		{"device its site's offer, live", devA1, root + "/+/model/offer", tuner, offerA, false, true},
		{"device its site's chunk, retained", devA1, root + "/lab-a/model/chunk/#", tuner, f.chunk(t, "lab-a"), true, true},

		{"device another site's offer, retained", devA1, offerB, tuner, offerB, true, false},
		{"device another site's offer, live", devA1, root + "/+/model/offer", tuner, offerB, false, false},
		{"device another site's chunk, retained", devA1, root + "/+/model/chunk/#", tuner, f.chunk(t, "lab-b"), true, false},
		{"device another device's label", devA1, root + "/lab-a/+/label", labeller, dev("lab-a", "dev-2", KindLabel), false, false},
		{"device another device's status", devA1, root + "/lab-a/+/status", devA2, dev("lab-a", "dev-2", KindStatus), false, false},
		{"device another device's retune request", devA1, f.siteTopic(t, tp.RetuneRequest, "lab-a"), devA2, f.siteTopic(t, tp.RetuneRequest, "lab-a"), false, false},
		{"device everything", devA1, "#", devB1, dev("lab-b", "dev-1", KindResult), false, false},
		{"collector results", collector, root + "/+/+/result", devA1, dev("lab-a", "dev-1", KindResult), false, false},
		{"monitor feedback", monitor, root + "/+/+/feedback", devA2, dev("lab-a", "dev-2", KindFeedback), false, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := f.payload(c.name)
			r := f.peers[c.reader]
			if c.retained {
				f.peers[c.from].publish(t, c.topic, p, true)
				defer f.peers[auditor].publish(t, c.topic, "", true)
				r.subscribe(t, c.filter)
			} else {
				r.subscribe(t, c.filter)
				f.peers[c.from].publish(t, c.topic, p, false)
			}
			defer r.unsubscribe(t, c.filter)
			// The broker took it: what follows is about reading only.
			f.peers[auditor].await(t, p, "a publish from "+c.from)
			if c.allowed {
				r.await(t, p, "a message it may read")
				return
			}
			f.control(t, c.reader)
			if topic, ok := r.has(p); ok {
				t.Fatalf("%s read %s", c.reader, topic)
			}
		})
	}
}

// A device's last will (its offline status) passes the ACL; a will on
// another device's status does not, although the broker takes the
// connection (mosquitto 2.0.11 checks a will when it sends it).
func TestShippedACLWill(t *testing.T) {
	f := startFleet(t)
	type willCase struct {
		name    string
		cn      string
		topic   string
		allowed bool
	}
	for _, c := range []willCase{
		{"own status", devA1, f.topic(t, "lab-a", "dev-1", KindStatus), true},
		{"another device's status", devA1, f.topic(t, "lab-a", "dev-2", KindStatus), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := f.payload(c.name)
			proxy := testutil.StartProxy(t, f.Addr())
			w := f.connect(t, c.cn, func(cfg *Config) {
				cfg.Broker = "ssl://" + proxy.Addr()
				cfg.Will = Will{Topic: c.topic, Payload: []byte(p), QoS: 1, Retain: true}
			})
			defer f.peers[auditor].publish(t, c.topic, "", true)
			proxy.Cut()
			if c.allowed {
				f.peers[monitor].await(t, p, "the will")
				return
			}
			// The broker handles the will where it logs the lost
			// connection; only then does a control prove anything.
			testutil.Eventually(t, 10*time.Second, func() bool {
				return strings.Contains(f.Log(), "Client "+w.id+" closed its connection") ||
					strings.Contains(f.Log(), "Socket error on client "+w.id)
			}, "the broker did not notice the cut connection of %s", w.id)
			f.control(t, monitor)
			if _, ok := f.peers[monitor].has(p); ok {
				t.Fatalf("%s's will on %s was published", c.cn, c.topic)
			}
		})
	}
}

// The certificate is the identity: without one there is no connection,
// and a username the client sends is ignored. An unlisted certificate gets
// nothing until its device is added to the list and mosquitto reloads.
func TestShippedACLIdentity(t *testing.T) {
	f := startFleet(t)
	for name, cfg := range map[string]Config{
		"no certificate":                   {CAFile: f.tls.CA},
		"no certificate, a known username": {CAFile: f.tls.CA, Username: tuner, Password: "anything"},
	} {
		cfg.Broker, cfg.ClientID, cfg.ConnectTimeout = f.TLSURL(), "acl-anonymous", 5*time.Second
		o, err := Options(cfg, nil, Hooks{})
		if err != nil {
			t.Fatal(err)
		}
		c := mqtt.NewClient(o.SetConnectRetry(false).SetAutoReconnect(false))
		if err := Wait(c.Connect(), 10*time.Second); err == nil {
			c.Disconnect(50)
			t.Errorf("%s: the broker took the connection", name)
		}
	}

	offer := f.siteTopic(t, f.tp.ModelOffer, "lab-a")
	liar := f.connect(t, devA1, func(cfg *Config) { cfg.Username, cfg.Password = tuner, "anything" })
	p := f.payload("offer from a device claiming to be the tuner")
	liar.publish(t, offer, p, true)
	defer f.peers[auditor].publish(t, offer, "", true)
	f.control(t, auditor)
	if _, ok := f.peers[auditor].has(p); ok {
		t.Fatal("a device that sent the tuner's username published an offer")
	}

	status := f.topic(t, "lab-c", "dev-9", KindStatus)
	before := f.payload("unlisted")
	f.peers[stranger].publish(t, status, before, false)
	f.control(t, monitor)
	if _, ok := f.peers[monitor].has(before); ok {
		t.Fatal("an unlisted certificate published its status")
	}
	f.writeACL(t, identities+"device lab-c dev-9\n")
	f.Reload()
	// The connection it already had, not a new one, gets the new rights.
	after := f.payload("listed")
	f.peers[stranger].publish(t, status, after, false)
	f.peers[monitor].await(t, after, "the status of a device added to the list")
}

// The shipped example ACL is what the script writes from the shipped
// example list, and the script builds the same topics as Topics under any
// root; a bad list is refused with the line named and nothing written.
func TestACLScript(t *testing.T) {
	list, err := os.ReadFile(filepath.Join(shippedMosquitto, "identities.example"))
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(filepath.Join(shippedMosquitto, "scopewatch.acl.example"))
	if err != nil {
		t.Fatal(err)
	}
	got, stderr, err := runACLScript(string(list))
	if err != nil || got != string(want) {
		t.Errorf("scopewatch.acl.example is not what scopewatch-acl.sh writes from identities.example (regenerate it): err %v %s\n%s", err, stderr, got)
	}

	tp, err := NewTopics("acme/sw")
	if err != nil {
		t.Fatal(err)
	}
	acl, stderr, err := runACLScript("device lab-1 scope_7\ntuner t\n", "-r", "/acme/sw/")
	if err != nil {
		t.Fatalf("-r acme/sw: %v %s", err, stderr)
	}
	mustTopic := func(s string, err error) string {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	for _, line := range []string{
		"user lab-1.scope_7",
		"topic readwrite " + mustTopic(tp.Device("lab-1", "scope_7", KindStatus)),
		"topic write " + mustTopic(tp.Device("lab-1", "scope_7", KindResult)),
		"topic read " + mustTopic(tp.Device("lab-1", "scope_7", KindLabel)),
		"topic write " + mustTopic(tp.RetuneRequest("lab-1")),
		"topic read " + mustTopic(tp.ModelOffer("lab-1")),
		"topic read " + strings.TrimSuffix(mustTopic(tp.ModelChunk("lab-1", "v", 0)), "/v/0") + "/#",
		"topic read " + mustTopic(tp.RetuneRequestFilter("")),
		"topic write " + strings.Replace(mustTopic(tp.ModelOffer("x")), "/x/", "/+/", 1),
	} {
		if !strings.Contains(acl, "\n"+line+"\n") {
			t.Errorf("-r acme/sw: no line %q in\n%s", line, acl)
		}
	}

	for _, c := range []struct{ name, list, args, msg string }{
		{"device without its device", "device lab-a\n", "", `stdin:1: want "device SITE DEVICE"`},
		{"upper case", "# fleet\ndevice Lab-a dev-1\n", "", "stdin:2: site and device must be"},
		{"service named like a device", "tuner lab-a.dev-1\n", "", "stdin:1: name lab-a.dev-1"},
		{"unknown role", "robot r\n", "", "stdin:1: unknown role robot"},
		{"twice", "device a b\ncollector c\ndevice a b\n", "", "stdin:3: identity a.b already listed on line 1"},
		{"empty", "# nobody\n\n", "", "stdin: no identities listed"},
		{"extra field", "collector c d\n", "", `stdin:1: want "collector NAME"`},
		{"bad root", "device a b\n", "-r Acme", `topic root Acme: level "Acme"`},
		{"deep root", "device a b\n", "-r a/b/c/d", "topic root a/b/c/d: want 1-3 levels"},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, stderr, err := runACLScript(c.list, strings.Fields(c.args)...)
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
				t.Errorf("exit: %v, want status 2", err)
			}
			if out != "" {
				t.Errorf("wrote an ACL anyway:\n%s", out)
			}
			if !strings.Contains(stderr, c.msg) {
				t.Errorf("stderr %q does not say %q", stderr, c.msg)
			}
		})
	}
}
