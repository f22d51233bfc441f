"""A real third-party SOAP client (python-zeep) calling the catalog service
through soapcache. Usage: zeep_client.py WSDL_URL PART [PART ...]

The WSDL is fetched through soapcache (a GET it must pass through), and the
service address inside it points at soapcache. Prints one JSON line per
call: the decoded answer and the X-Cache header soapcache added.
"""
import json
import sys

from zeep import Client
from zeep.plugins import HistoryPlugin

wsdl, parts = sys.argv[1], sys.argv[2:]
history = HistoryPlugin()
client = Client(wsdl, plugins=[history])
for part in parts:
    answer = client.service.CatalogPrice(PartNumber=part)
    headers = history.last_received["http_headers"]
    print(json.dumps({
        "part": answer.PartNumber,
        "price": str(answer.Price),
        "x_cache": headers.get("X-Cache"),
    }), flush=True)
