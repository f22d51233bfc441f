"""python-zeep driving soapcache's write path with WS-Addressing.

Usage:
  zeep_wsa.py callback WSDL_URL CALLBACK_PORT ITEM
      Calls Quote with zeep's WsAddressingPlugin (Action, MessageID, To) and a
      wsa:ReplyTo added through zeep's plugin API, pointing at a listener this
      script runs on 127.0.0.1:CALLBACK_PORT. soapcache answers 202 (zeep
      returns None); the callback that arrives is parsed by zeep as the
      operation's answer. Prints one JSON line.
  zeep_wsa.py expired WSDL_URL ITEM
      Calls Quote with a WS-Security Timestamp that expired a minute ago
      (added through the plugin API); prints the fault zeep raised.
"""
import datetime
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

from lxml import etree
from zeep import Client
from zeep.exceptions import Fault
from zeep.plugins import HistoryPlugin, Plugin
from zeep.transports import Transport
from zeep.wsa import WsAddressingPlugin

WSA = "http://www.w3.org/2005/08/addressing"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"


def header_of(envelope):
    header = envelope.find(f"{{{SOAP_ENV}}}Header")
    if header is None:
        header = etree.Element(f"{{{SOAP_ENV}}}Header")
        envelope.insert(0, header)
    return header


class ReplyTo(Plugin):
    """Adds wsa:ReplyTo (with a reference parameter) to every request."""

    def __init__(self, address):
        self.address = address

    def egress(self, envelope, http_headers, operation, binding_options):
        reply_to = etree.SubElement(header_of(envelope), f"{{{WSA}}}ReplyTo")
        etree.SubElement(reply_to, f"{{{WSA}}}Address").text = self.address
        params = etree.SubElement(reply_to, f"{{{WSA}}}ReferenceParameters")
        etree.SubElement(params, "{urn:client}Ticket").text = "T-42"
        return envelope, http_headers


class ExpiredTimestamp(Plugin):
    def egress(self, envelope, http_headers, operation, binding_options):
        now = datetime.datetime.now(datetime.timezone.utc)
        fmt = "%Y-%m-%dT%H:%M:%SZ"
        security = etree.SubElement(header_of(envelope), f"{{{WSSE}}}Security")
        stamp = etree.SubElement(security, f"{{{WSU}}}Timestamp")
        etree.SubElement(stamp, f"{{{WSU}}}Created").text = (now - datetime.timedelta(minutes=5)).strftime(fmt)
        etree.SubElement(stamp, f"{{{WSU}}}Expires").text = (now - datetime.timedelta(minutes=1)).strftime(fmt)
        return envelope, http_headers


class RecordingTransport(Transport):
    """Keeps the last HTTP response: zeep hands plugins no 202 without a body."""

    last = None

    def post(self, address, message, headers):
        self.last = super().post(address, message, headers)
        return self.last


def callback(wsdl, port, item):
    received = []
    arrived = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received.append((self.path, body))
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()
            arrived.set()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    history = HistoryPlugin()
    address = f"http://127.0.0.1:{port}/callbacks/quotes"
    transport = RecordingTransport()
    client = Client(
        wsdl, transport=transport, plugins=[WsAddressingPlugin(), ReplyTo(address), history]
    )
    immediate = client.service.Quote(Item=item)
    sent = history.last_sent["envelope"]
    message_id = sent.find(f".//{{{WSA}}}MessageID").text
    status = transport.last.headers
    if not arrived.wait(20):
        raise SystemExit("no callback within 20 s")
    path, body = received[0]
    envelope = etree.fromstring(body)
    # zeep reads the callback as the operation's own answer.
    operation = client.service._binding._operations["Quote"]
    answer = operation.process_reply(envelope)
    header = envelope.find(f"{{{SOAP_ENV}}}Header")
    ticket = header.find("{urn:client}Ticket")
    print(json.dumps({
        "immediate": immediate,
        "status": transport.last.status_code,
        "x_cache": status.get("X-Cache"),
        "x_message_id": status.get("X-Message-Id"),
        "message_id": message_id,
        "path": path,
        "relates_to": header.findtext(f"{{{WSA}}}RelatesTo"),
        "to": header.findtext(f"{{{WSA}}}To"),
        "ticket": ticket.text if ticket is not None else None,
        "ticket_marked": ticket.get(f"{{{WSA}}}IsReferenceParameter") if ticket is not None else None,
        "item": answer.Item,
        "price": str(answer.Price),
    }), flush=True)
    server.shutdown()


def expired(wsdl, item):
    client = Client(wsdl, plugins=[WsAddressingPlugin(), ExpiredTimestamp()])
    try:
        client.service.Quote(Item=item)
    except Fault as fault:
        print(json.dumps({"fault": fault.message, "code": fault.code}), flush=True)
        return
    raise SystemExit("no fault for an expired message")


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "callback":
        callback(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif mode == "expired":
        expired(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(__doc__)
