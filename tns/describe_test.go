package tns_test

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/tnsguard/tnsguard/tns"
)

func TestDescriptionHelpers(t *testing.T) {
	const s = ` (description = (address=(protocol=TCP)(host=db1)(port=1521))
		(ADDRESS=(PROTOCOL=tcp)(HOST=db2)(PORT=1522))
		(Connect_Data=(Service_Name= Sales.example.com )(cid=(PROGRAM="C:\Program Files (x86)\app.exe")(HOST=app1)(USER=svc\)acct))))` + "\x00\x00"
	d, err := tns.ParseDescription(s)
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "ServiceName", d.ServiceName(), "Sales.example.com")
	eq(t, "SID", d.SID(), "")
	eq(t, "Program", d.Program(), `C:\Program Files (x86)\app.exe`)
	eq(t, "ClientHost", d.ClientHost(), "app1")
	eq(t, "ClientUser", d.ClientUser(), "svc)acct")
	want := []tns.Address{{"TCP", "db1", "1521"}, {"tcp", "db2", "1522"}}
	if got := d.Addresses(); !reflect.DeepEqual(got, want) {
		t.Errorf("Addresses() = %+v, want %+v", got, want)
	}
	if v, ok := d.Value("ADDRESS", "HOST"); !ok || v != "db1" {
		t.Errorf(`Value("ADDRESS", "HOST") = %q, %v`, v, ok)
	}
	if _, ok := d.Value("CONNECT_DATA"); ok {
		t.Error(`Value("CONNECT_DATA") found a value on a node with children`)
	}
	if _, ok := d.Value("CONNECT_DATA", "HOST"); ok {
		t.Error(`Value("CONNECT_DATA", "HOST") matched a grandchild; path steps are direct children`)
	}
	if _, ok := d.Err(); ok {
		t.Error("Err() found an ERR in connect data")
	}

	// Thick clients on Windows send paths unquoted: a backslash before an
	// ordinary character is kept.
	w, err := tns.ParseDescription(`(CID=(PROGRAM=C:\app\orders.exe)(HOST=WIN1)(USER=a\b))`)
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "Windows Program", w.Program(), `C:\app\orders.exe`)
	eq(t, "Windows ClientUser", w.ClientUser(), `a\b`)
}

func TestDescriptionErrAndVersion(t *testing.T) {
	tests := []struct {
		in      string
		wantErr int
		hasErr  bool
		wantVsn string
	}{
		{"(DESCRIPTION=(TMP=)(VSNNUM=318767104)(ERR=12514)(ERROR_STACK=(ERROR=(CODE=12514)(EMFI=4))))", 12514, true, "19.0.0.0.0"},
		{"(DESCRIPTION=(TMP=)(VSNNUM=352321536)(ERR=0)(ALIAS=LISTENER))", 0, true, "21.0.0.0.0"},
		{"(DESCRIPTION=(ERR= 12505 ))", 12505, true, ""},
		{"(DESCRIPTION=(ERR=-1)(VSNNUM=x))", 0, false, ""},
		{"(DESCRIPTION=(ERR=99999999999))", 0, false, ""},
		{"(DESCRIPTION=(ERR=(CODE=1)))", 0, false, ""},
	}
	for _, tt := range tests {
		d, err := tns.ParseDescription(tt.in)
		if err != nil {
			t.Fatalf("%s: %v", tt.in, err)
		}
		code, ok := d.Err()
		if code != tt.wantErr || ok != tt.hasErr {
			t.Errorf("%s: Err() = %d, %v; want %d, %v", tt.in, code, ok, tt.wantErr, tt.hasErr)
		}
		v, ok := d.VSNNUM()
		if got := map[bool]string{true: tns.DecodeVSNNUM(v), false: ""}[ok]; got != tt.wantVsn {
			t.Errorf("%s: version = %q, want %q", tt.in, got, tt.wantVsn)
		}
	}
	for vsn, want := range map[uint32]string{
		318767104:  "19.0.0.0.0", // 0x13000000
		0x0A200100: "10.2.0.1.0",
		0x0C100200: "12.1.0.2.0",
		0x17400000: "23.4.0.0.0",
		0xFFFFFFFF: "255.15.255.15.255",
	} {
		eq(t, "DecodeVSNNUM", tns.DecodeVSNNUM(vsn), want)
	}
}

func TestParseDescriptionRejects(t *testing.T) {
	for _, in := range []string{
		"",
		"   ",
		"DESCRIPTION=(X=1)",
		"(DESCRIPTION=(X=1)",
		"(DESCRIPTION=(X=1)))",
		"(X)",
		"(=1)",
		"(X=a(b))",
		"(X=(Y=1) z)",
		`(X="unterminated)`,
		`(X=a\)`,
		"(X=1) trailing",
		"(X=(Y=1)" + strings.Repeat("(", 10),
		strings.Repeat("(A=", 40) + "1" + strings.Repeat(")", 40),
	} {
		if d, err := tns.ParseDescription(in); !errors.Is(err, tns.ErrMalformed) {
			t.Errorf("ParseDescription(%q) = %v, %v; want ErrMalformed", in, d, err)
		}
	}
	// Nesting up to the bound is fine.
	deep := strings.Repeat("(A=", 32) + "1" + strings.Repeat(")", 32)
	if _, err := tns.ParseDescription(deep); err != nil {
		t.Errorf("32 levels: %v", err)
	}
}

func TestDescriptionStringRoundTrip(t *testing.T) {
	for _, in := range []string{
		"(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES)(CID=(PROGRAM=)(HOST=h)(USER=u))))",
		`(A=" padded ")(B="x\"y\\z")(C=a b)(D="(=)")`,
		"(ADDRESS=(PROTOCOL=tcp)(HOST=::1)(PORT=1521))",
	} {
		d, err := tns.ParseDescription(in)
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		again, err := tns.ParseDescription(d.String())
		if err != nil || !reflect.DeepEqual(d, again) {
			t.Errorf("round trip of %s via %s = %v, %v", in, d.String(), again, err)
		}
	}
	d, _ := tns.ParseDescription("( A = ( B = 1 ) )")
	eq(t, "String", d.String(), "(A=(B=1))")
}

// LooseService reads the service from connect data that does not parse as
// a whole, as a client's unescaped program path makes it.
func TestLooseService(t *testing.T) {
	for _, tc := range []struct{ data, want string }{
		{`(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES)(CID=(PROGRAM=C:\Program Files (x86)\a.exe))))`, "SALES"},
		{`(DESCRIPTION=(CONNECT_DATA=(CID=(PROGRAM=x (y)))(service_name = orders.example )))`, "orders.example"},
		{`(DESCRIPTION=(CONNECT_DATA=(SID=XE)(CID=(USER=o"brien))))`, "XE"},
		{`(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAMES=A)(SERVICE_NAME=B)))`, "B"},
		{`(DESCRIPTION=(CONNECT_DATA=(CID=(PROGRAM=(x)))))`, ""},
		// A user name in a single-byte code page (cp1252 "ü", not UTF-8)
		// before the service: strings.ToUpper's offsets did not index the
		// original, so this panicked (the whole process) or lost the name.
		{"(DESCRIPTION=(CONNECT_DATA=(CID=(PROGRAM=C:\\P (x86)\\a.exe)(USER=J\xfcrgen M\xfcller))(SERVICE_NAME=SALES)))", "SALES"},
		{"(" + strings.Repeat("\xff", 40) + "(SERVICE_NAME=X)", "X"},
	} {
		if got := tns.LooseService(tc.data); got != tc.want {
			t.Errorf("LooseService(%q) = %q, want %q", tc.data, got, tc.want)
		}
	}
	_, err := tns.ParseConnectData(mustBuild(t, `(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=S)(CID=(PROGRAM=a (b)))))`))
	if !errors.Is(err, tns.ErrDescription) {
		t.Errorf("ParseConnectData of a whole CONNECT with odd text: %v, want ErrDescription", err)
	}
}

// go-ora writes os.Args[0] into CID unescaped: parentheses that pair up
// inside CID's PROGRAM, HOST and USER are text. Nothing else is let
// through.
func TestParseDescriptionCID(t *testing.T) {
	for _, tc := range []struct {
		in, program string
		ok          bool
	}{
		{`(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES)(CID=(PROGRAM=C:\Program Files (x86)\app.exe)(HOST=w)(USER=u)))(ADDRESS=(PROTOCOL=TCP)(HOST=x)(PORT=1)))`, `C:\Program Files (x86)\app.exe`, true},
		{`(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES)(CID=(PROGRAM=app)(HOST=box (2))(USER=a(b)c))))`, `app`, true},
		{`(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES)(CID=(PROGRAM=app.exe)(HOST=w)(USER=u))))`, `app.exe`, true},
		{`garbage`, ``, false},
		{`()`, ``, false},
		{`(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES))(=x))`, ``, false},
		{`(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SA(LES)))`, ``, false},                              // not a CID value
		{`(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES)(CID=(PROGRAM=C:\a(b\app.exe))))`, ``, false}, // does not pair up
		// Only text values directly in CID, and only pairs that hold text:
		// anything else is a CONNECT no listener reads, which must not be
		// replayed to every server (one client would open every circuit).
		{`(HOST=())`, ``, false},
		{`(USER=(=)(=))`, ``, false},
		{`(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES))(HOST=(=x)))`, ``, false},
		{`(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES))(ADDRESS=(HOST=a(b)c)))`, ``, false},
		{`(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES)(CID=(PROGRAM=a(=x)b))))`, ``, false},
		{`(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES)(CID=(PROGRAM=a()b))))`, ``, false},
		{`(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES)(CID=(PROGRAM=(x86)))))`, ``, false}, // a list
		{`(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES)(CID=(OTHER=a(b)c))))`, ``, false},
		{`(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES)(CID=(PROGRAM=a(b"="c)))))`, ``, false},
		{`(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES)(CID=(PROGRAM=a("")b))))`, ``, false},
		// Quotes are read as the parser reads them.
		{`(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=SALES)(CID=(PROGRAM="(")(HOST=w (1)))))`, `(`, true},
	} {
		d, err := tns.ParseDescriptionCID(tc.in)
		if (err == nil) != tc.ok {
			t.Errorf("%s: error %v, want ok %v", tc.in, err, tc.ok)
			continue
		}
		if err == nil && (d.Program() != tc.program || d.ServiceName() != "SALES") {
			t.Errorf("%s: program %q, service %q; want %q, SALES", tc.in, d.Program(), d.ServiceName(), tc.program)
		}
	}
}

// An IPv6 address in a REDIRECT's ADDRESS, bare as Oracle's descriptors
// write it or in brackets as a URL does, is dialed as net.Dial takes it:
// the bracketed one was "[[::1]]:1521", which no dial takes.
func TestAddressHostPortOfIPv6(t *testing.T) {
	for _, tc := range []struct{ host, want string }{
		{"::1", "[::1]:1521"},
		{"[::1]", "[::1]:1521"},
		{"[2001:db8::5]", "[2001:db8::5]:1521"},
		{"fe80::1%eth0", "[fe80::1%eth0]:1521"},
		{"node1-vip", "node1-vip:1521"},
		{"[node1-vip]", "[node1-vip]:1521"}, // no address in them: left as sent (net.Dial takes the name out of them, and dials node1-vip)
	} {
		if got := (tns.Address{Protocol: "tcp", Host: tc.host, Port: "1521"}).HostPort(); got != tc.want {
			t.Errorf("HOST=%s: HostPort() = %q, want %q", tc.host, got, tc.want)
		}
	}
}
