"""SODA found by the standard, not only as a ``#cutout`` link (issue 21, part 6).

A SODA service is recognised by its service descriptor's standardID
(``ivo://ivoa.net/std/SODA#sync-1.0``), wherever the archive puts it: the RSP points
Datalink's ``#cutout`` row at ``cutout-sync``; GAVO DaCHS points a ``#proc`` row at
``procsvc``, whose ``ID`` carries the dataset and whose numeric params are empty
templates; a TAP result may carry one whose ``ID`` names a column. The documents below
are shaped as those services write them (DaCHS' is what DaCHS 2.7 answered in
``make interop``, verbatim but for the host). Then a cutout-mode harvest against the
embedded archive in DaCHS' dialect (``soda=proc``) stores cutouts holding each target.
"""

from __future__ import annotations

import io
import math
from urllib.parse import parse_qsl, urlsplit

import pyarrow.dataset as ds
import pytest
import requests
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.io.votable import parse as parse_votable
from astropy.wcs import WCS

from obsharvest.access import kinds
from obsharvest.access.datalink import DatalinkResolver
from obsharvest.access.soda import CutoutRequest, fetch_cutout
from obsharvest.errors import CutoutUnavailableError
from obsharvest.flows.harvest import harvest_params
from obsharvest.flows.params import HarvestParams
from obsharvest.images.cutout import check_cutouts_offered
from obsharvest.models import ImageWork, Target
from obsharvest.simarchive.dialect import Dialect
from obsharvest.simarchive.faults import FaultPlan
from obsharvest.simarchive.server import ArchiveSettings, EmbeddedArchive
from obsharvest.storage.store import ObjectStore
from tests.crafted_server import CraftedServer, Reply

DATALINK_TYPE = "application/x-votable+xml;content=datalink"
DACHS_ID = "ivo://obsharvest.test/~?obsharvest_interop/data/dl/fa-04.fits"

# GAVO DaCHS 2.7's links document for one image of tests/interop (`make interop`)
DACHS_LINKS = (
    "<?xml-stylesheet href='/static/xsl/datalink-to-html.xsl' type='text/xsl'?><VOTAB"
    'LE version="1.4" xmlns="http://www.ivoa.net/xml/VOTable/v1.3" xmlns:xsi="http://'
    'www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="http://www.ivoa.net/xml/'
    'VOTable/v1.3 http://vo.ari.uni-heidelberg.de/docs/schemata/VOTable-1.4.xsd"><INF'
    'O name="QUERY_STATUS" value="OK"></INFO><RESOURCE type="results"><TABLE name="dl'
    'response"><DESCRIPTION>Data links for data sets.</DESCRIPTION><FIELD ID="ID" arr'
    'aysize="*" datatype="char" name="ID" ucd="meta.id;meta.main"><DESCRIPTION>Publis'
    "her data set id; this is an identifier for the dataset in question and can be us"
    'ed to retrieve the data.</DESCRIPTION></FIELD><FIELD ID="access_url" arraysize="'
    '*" datatype="char" name="access_url" ucd="meta.ref.url"><DESCRIPTION>URL to retr'
    'ieve the data or access the service.</DESCRIPTION></FIELD><FIELD ID="service_def'
    '" arraysize="*" datatype="char" name="service_def" ucd="meta.code"><DESCRIPTION>'
    "Identifier for the type of service if accessURL refers to a service.</DESCRIPTIO"
    'N></FIELD><FIELD ID="error_message" arraysize="*" datatype="char" name="error_me'
    'ssage" ucd="meta.code.error"><DESCRIPTION>If accessURL is empty, this column giv'
    'es the reason why.</DESCRIPTION></FIELD><FIELD ID="description" arraysize="*" da'
    'tatype="char" name="description" ucd="meta.note"><DESCRIPTION>More information o'
    'n this link</DESCRIPTION></FIELD><FIELD ID="semantics" arraysize="*" datatype="c'
    'har" name="semantics" ucd="meta.code"><DESCRIPTION>What kind of data is linked h'
    "ere? Standard identifiers here include science, calibration, preview, info, auxi"
    'liary</DESCRIPTION></FIELD><FIELD ID="content_type" arraysize="*" datatype="char'
    '" name="content_type" ucd="meta.code.mime"><DESCRIPTION>Media type for the data '
    'returned.</DESCRIPTION></FIELD><FIELD ID="content_length" datatype="long" name="'
    'content_length" ucd="phys.size;meta.file" unit="byte"><DESCRIPTION>Size of the r'
    'esource at access_url.</DESCRIPTION><VALUES null="-1"></VALUES></FIELD><FIELD ID'
    '="local_semantics" arraysize="*" datatype="char" name="local_semantics" ucd="met'
    'a.id.assoc"><DESCRIPTION>An identifier that allows clients to associate rows fro'
    "m different datalink documents on the same service with each other.</DESCRIPTION"
    "></FIELD><DATA><TABLEDATA><TR><TD>ivo://obsharvest.test/~?obsharvest_interop/dat"
    "a/dl/fa-04.fits</TD><TD></TD><TD>procsvc</TD><TD></TD><TD>An interactive service"
    " on this dataset.</TD><TD>#proc</TD><TD></TD><TD>-1</TD><TD></TD></TR><TR><TD>iv"
    "o://obsharvest.test/~?obsharvest_interop/data/dl/fa-04.fits</TD><TD>{base}/getpr"
    "oduct/obsharvest_interop/data/dl/fa-04.fits</TD><TD></TD><TD></TD><TD>The full d"
    "ataset.</TD><TD>#this</TD><TD>image/fits</TD><TD>368640</TD><TD></TD></TR><TR><T"
    "D>ivo://obsharvest.test/~?obsharvest_interop/data/dl/fa-04.fits</TD><TD>{base}/g"
    "etproduct/obsharvest_interop/data/dl/fa-04.fits?preview=True</TD><TD></TD><TD></"
    "TD><TD>A preview for the dataset.</TD><TD>#preview</TD><TD></TD><TD>-1</TD><TD><"
    '/TD></TR></TABLEDATA></DATA></TABLE></RESOURCE><RESOURCE ID="procsvc" name="proc'
    '_svc" type="meta" utype="adhoc:service"><DESCRIPTION>An interactive service on t'
    'his dataset.</DESCRIPTION><GROUP name="inputParams"><PARAM arraysize="*" datatyp'
    'e="char" name="ID" ucd="meta.id;meta.main" value="ivo://obsharvest.test/~?obshar'
    'vest_interop/data/dl/fa-04.fits"><DESCRIPTION>The publisher DID of the dataset o'
    'f interest</DESCRIPTION></PARAM><PARAM arraysize="2" datatype="double" name="DEC'
    '" ucd="pos.eq.dec" unit="deg" value="" xtype="interval"><DESCRIPTION>The latitud'
    'e coordinate</DESCRIPTION><VALUES><MIN value="1.922325537220946"></MIN><MAX valu'
    'e="2.008229057556928"></MAX></VALUES></PARAM><PARAM arraysize="2" datatype="doub'
    'le" name="RA" ucd="pos.eq.ra" unit="deg" value="" xtype="interval"><DESCRIPTION>'
    'The longitude coordinate</DESCRIPTION><VALUES><MIN value="149.85279381997023"></'
    'MIN><MAX value="149.93874792013807"></MAX></VALUES></PARAM><PARAM datatype="int"'
    ' name="SCALE" value=""><DESCRIPTION>Factor to scale the image down before transp'
    "orting (this does not currently take into account cutout parameters).</DESCRIPTI"
    'ON><VALUES><MIN value="2"></MIN><MAX value="32"></MAX></VALUES></PARAM><PARAM ar'
    'raysize="*" datatype="char" name="POS" ucd="phys.angArea;obs" value=""><DESCRIPT'
    "ION>Region to (approximately) cut out, as Circle, Region, or Polygon</DESCRIPTIO"
    'N></PARAM><PARAM arraysize="*" datatype="double" name="POLYGON" ucd="phys.argAre'
    'a;obs" unit="deg" value="" xtype="polygon"><DESCRIPTION>A polygon (as a flattene'
    "d array of ra, dec pairs) that should be covered by the cutout.</DESCRIPTION><VA"
    'LUES><MAX value="149.85279382 1.9252240615 149.8556920597 2.0082290576 149.93874'
    '79201 2.0053303892 149.9358455568 1.9223255372"></MAX></VALUES></PARAM><PARAM ar'
    'raysize="3" datatype="double" name="CIRCLE" ucd="phys.argArea;obs" unit="deg" va'
    'lue="" xtype="circle"><DESCRIPTION>A circle (as a flattened array of ra, dec, ra'
    'dius) that should be covered by the cutout.</DESCRIPTION><VALUES><MAX value="149'
    '.8959038751 1.9651341263 0.0589255445"></MAX></VALUES></PARAM><PARAM arraysize="'
    '2" datatype="int" name="PIXEL_1" ucd="pos.cartesian.x;instr.pixel" value="" xtyp'
    'e="interval"><DESCRIPTION>Pixel coordinate along axis 1</DESCRIPTION><VALUES><MI'
    'N value="1"></MIN><MAX value="300"></MAX></VALUES></PARAM><PARAM arraysize="2" d'
    'atatype="int" name="PIXEL_2" ucd="pos.cartesian.y;instr.pixel" value="" xtype="i'
    'nterval"><DESCRIPTION>Pixel coordinate along axis 2</DESCRIPTION><VALUES><MIN va'
    'lue="1"></MIN><MAX value="300"></MAX></VALUES></PARAM><PARAM arraysize="*" datat'
    'ype="char" name="KIND" value=""><DESCRIPTION>Set to HEADER to retrieve just the '
    'primary header, leave empty for data.</DESCRIPTION><VALUES><OPTION name="Retriev'
    'e header only" value="HEADER"/><OPTION name="Retrieve the full data, including h'
    'eader (default)" value="DATA"/></VALUES></PARAM></GROUP><PARAM arraysize="*" dat'
    'atype="char" name="accessURL" ucd="meta.ref.url" value="{base}/obsharvest_intero'
    'p/q/dlsvc/dlget"/><PARAM arraysize="*" datatype="char" name="standardID" value="'
    'ivo://ivoa.net/std/SODA#sync-1.0"/></RESOURCE></VOTABLE>'
)

# The RSP's shape (its documentation and pyvo's tests): #this, then a #cutout row naming
# the cutout-sync descriptor, whose ID param carries the dataset's ID.
RSP_ID = "butler://dp02/20d28216-534a-4102-b8a7-1c7f32a9b78c"
RSP_LINKS = """<?xml version="1.0" encoding="UTF-8"?>
<VOTABLE version="1.3" xmlns="http://www.ivoa.net/xml/VOTable/v1.3">
<RESOURCE type="results">
<TABLE>
<FIELD name="ID" datatype="char" arraysize="*" ucd="meta.id;meta.main"/>
<FIELD name="access_url" datatype="char" arraysize="*" ucd="meta.ref.url"/>
<FIELD name="service_def" datatype="char" arraysize="*" ucd="meta.ref"/>
<FIELD name="error_message" datatype="char" arraysize="*" ucd="meta.code.error"/>
<FIELD name="semantics" datatype="char" arraysize="*" ucd="meta.code"/>
<FIELD name="description" datatype="char" arraysize="*" ucd="meta.note"/>
<FIELD name="content_type" datatype="char" arraysize="*" ucd="meta.code.mime"/>
<FIELD name="content_length" datatype="long" unit="byte" ucd="phys.size;meta.file"/>
<DATA><TABLEDATA>
<TR><TD>{rsp_id}</TD><TD>{base}/files/calexp.fits?X-Amz-Signature=abc</TD><TD/><TD/>
<TD>#this</TD><TD>Primary image or observation data file</TD><TD>application/fits</TD>
<TD>2880</TD></TR>
<TR><TD>{rsp_id}</TD><TD/><TD>cutout-sync</TD><TD/><TD>#cutout</TD>
<TD>Cutout service</TD><TD>application/fits</TD><TD/></TR>
</TABLEDATA></DATA>
</TABLE>
</RESOURCE>
<RESOURCE type="meta" utype="adhoc:service" ID="cutout-sync">
<PARAM name="standardID" datatype="char" arraysize="*" value="ivo://ivoa.net/std/SODA#sync-1.0"/>
<PARAM name="accessURL" datatype="char" arraysize="*" value="{base}/api/cutout/sync"/>
<GROUP name="inputParams">
<PARAM name="ID" datatype="char" arraysize="*" ucd="meta.id;meta.dataset" value="{rsp_id}"/>
<PARAM name="POS" datatype="char" arraysize="*" ucd="pos.outline;obs" value=""/>
<PARAM name="CIRCLE" datatype="double" arraysize="3" xtype="circle" unit="deg" value=""/>
<PARAM name="POLYGON" datatype="double" arraysize="*" xtype="polygon" unit="deg" value=""/>
</GROUP>
</RESOURCE>
</VOTABLE>
"""

# A TAP result carrying a SODA descriptor beside its Datalink one (DataLink 1.1 §4):
# the ID param refers to the obs_publisher_did FIELD by its XML ID.
TAP_RESULT = """<?xml version="1.0" encoding="UTF-8"?>
<VOTABLE version="1.4" xmlns="http://www.ivoa.net/xml/VOTable/v1.3">
<RESOURCE type="results"><INFO name="QUERY_STATUS" value="OK"/><TABLE>
<FIELD name="obs_publisher_did" ID="did" datatype="char" arraysize="*"/>
<FIELD name="access_url" datatype="char" arraysize="*"/>
<DATA><TABLEDATA><TR><TD>ivo://x/a</TD><TD>http://x/a.fits</TD></TR></TABLEDATA></DATA>
</TABLE></RESOURCE>
<RESOURCE type="meta" utype="adhoc:service" ID="soda-sync">
<PARAM name="standardID" datatype="char" arraysize="*" value="ivo://ivoa.net/std/SODA#{flavour}"/>
<PARAM name="accessURL" datatype="char" arraysize="*" value="http://x/soda?RESPONSEFORMAT=fits"/>
<GROUP name="inputParams">
<PARAM name="ID" datatype="char" arraysize="*" ref="did" value=""/>
{shapes}
<PARAM name="SCALE" datatype="int" value=""/>
</GROUP></RESOURCE>
</VOTABLE>
"""
SHAPE_PARAMS = {
    "CIRCLE": '<PARAM name="CIRCLE" datatype="double" arraysize="3" xtype="circle" value=""/>',
    "POS": '<PARAM name="POS" datatype="char" arraysize="*" value=""/>',
    "POLYGON": '<PARAM name="POLYGON" datatype="double" arraysize="*" xtype="polygon" value=""/>',
}


@pytest.fixture
def server():
    with CraftedServer() as srv:
        yield srv


def _resolve(url: str):
    """One Datalink document, resolved as a harvest resolves it (its URL as given)."""
    with requests.Session() as session:
        return DatalinkResolver(session).resolve({"image": url})["image"]


def _query(url: str) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(url).query, keep_blank_values=True)


def _links_doc(rows: list[tuple[str, str, str]], descriptors: list[tuple[str, str]]) -> str:
    """A links document: rows of (semantics, access_url, service_def) for one ID, and
    descriptors (resource ID, standardID) each taking ``ID`` and ``CIRCLE``."""
    cells = "".join(
        f"<TR><TD>ivo://x/img</TD><TD>{url}</TD><TD>{sdef}</TD><TD>{sem}</TD></TR>"
        for sem, url, sdef in rows
    )
    resources = "".join(
        f'<RESOURCE type="meta" utype="adhoc:service" ID="{rid}">'
        f'<PARAM name="standardID" datatype="char" arraysize="*" value="{std}"/>'
        f'<PARAM name="accessURL" datatype="char" arraysize="*" value="http://x/{rid}"/>'
        '<GROUP name="inputParams">'
        '<PARAM name="ID" datatype="char" arraysize="*" value="ivo://x/img"/>'
        '<PARAM name="CIRCLE" datatype="double" arraysize="3" xtype="circle" value=""/>'
        "</GROUP></RESOURCE>"
        for rid, std in descriptors
    )
    fields = "".join(
        f'<FIELD name="{n}" datatype="char" arraysize="*"/>'
        for n in ("ID", "access_url", "service_def", "semantics")
    )
    return (
        '<?xml version="1.0"?><VOTABLE version="1.4" '
        'xmlns="http://www.ivoa.net/xml/VOTable/v1.3"><RESOURCE type="results">'
        f"<TABLE>{fields}<DATA><TABLEDATA>{cells}</TABLEDATA></DATA></TABLE></RESOURCE>"
        f"{resources}</VOTABLE>"
    )


# -- recognising a SODA descriptor ------------------------------------------------------


@pytest.mark.parametrize(
    ("standard_id", "flavour"),
    [
        ("ivo://ivoa.net/std/SODA#sync-1.0", "sync"),
        ("ivo://ivoa.net/std/SODA#sync-1", "sync"),
        ("IVO://IVOA.NET/STD/soda#SYNC-1.0", "sync"),
        ("ivo://ivoa.net/std/SODA#async-1.0", "async"),
        ("ivo://ivoa.net/std/SODA#ASYNC-1", "async"),
        ("ivo://ivoa.net/std/DataLink#links-1.0", None),
        ("ivo://ivoa.net/std/SIA#query-2.0", None),
        ("", None),
    ],
)
def test_soda_is_known_by_its_standard_id_in_any_case(standard_id, flavour):
    assert kinds.soda_flavour(standard_id) == flavour


def test_rsp_cutout_row_names_the_cutout_sync_descriptor(server):
    base = server.base_url
    doc = RSP_LINKS.replace("{base}", base).replace("{rsp_id}", RSP_ID)
    url = server.route("/api/datalink/links", Reply(body=doc.encode()))
    link = _resolve(f"{url}?ID={RSP_ID}")
    assert link.error is None and link.url.startswith(f"{base}/files/calexp.fits")
    assert (link.soda_url, link.soda_id, link.soda_shape) == (
        f"{base}/api/cutout/sync",
        RSP_ID,
        "CIRCLE",
    )


def test_dachs_proc_row_names_a_soda_descriptor_and_its_templates_stay_unsent(server):
    """DaCHS 2.7: no #cutout row; the #proc row's service_def is ``procsvc``, a SODA sync
    descriptor whose ID is the dataset's and whose CIRCLE, SCALE, PIXEL_n are empty
    numeric templates (read as zeros by astropy): none of them may be sent."""
    base = server.base_url
    server.route(
        "/obsharvest_interop/q/dlsvc/dlmeta",
        Reply(body=DACHS_LINKS.replace("{base}", base).encode()),
    )
    link = _resolve(f"{base}/obsharvest_interop/q/dlsvc/dlmeta?ID={DACHS_ID}")
    assert link.error is None
    assert link.url == f"{base}/getproduct/obsharvest_interop/data/dl/fa-04.fits"
    assert link.content_length == 368640
    assert link.soda_url == f"{base}/obsharvest_interop/q/dlsvc/dlget"
    assert (link.soda_id, link.soda_shape) == (DACHS_ID, "CIRCLE")
    request = CutoutRequest(link.soda_url, link.soda_id, 149.9, 1.96, 0.01, link.soda_shape)
    assert _query(request.url) == [("ID", DACHS_ID), ("CIRCLE", "149.9 1.96 0.01")]

    descriptor = next(
        iter(kinds.service_descriptors(parse_votable(io.BytesIO(DACHS_LINKS.encode()))))
    )
    assert descriptor.resource_id == "procsvc" and descriptor.soda == "sync"
    assert descriptor.id_value == DACHS_ID and descriptor.fixed == ()
    assert {"CIRCLE", "POS", "POLYGON", "SCALE", "KIND"} <= set(descriptor.inputs)


def test_a_soda_proc_row_is_taken_over_other_services_and_async_is_not_used(server):
    base = server.base_url
    doc = _links_doc(
        [
            ("#this", f"{base}/file.fits", ""),
            ("#proc", "", "other"),  # a #proc service that is not SODA
            ("#proc", "", "soda-async"),
            ("#proc", "", "soda-sync"),
        ],
        [
            ("other", "ivo://example.org/std/Preview#image"),
            ("soda-async", "ivo://ivoa.net/std/SODA#async-1.0"),
            ("soda-sync", "ivo://ivoa.net/std/SODA#sync-1.0"),
        ],
    )
    link = _resolve(server.route("/dl/one", Reply(body=doc.encode())))
    assert (link.soda_url, link.soda_id) == ("http://x/soda-sync", "ivo://x/img")

    only_async = _links_doc(
        [("#this", f"{base}/file.fits", ""), ("#proc", "", "soda-async")],
        [("soda-async", "ivo://ivoa.net/std/SODA#async-1.0")],
    )
    link = _resolve(server.route("/dl/async", Reply(body=only_async.encode())))
    assert link.url and link.soda_url is None  # SODA async is a UWS job: not run here

    unnamed = _links_doc(  # a descriptor no row names is not guessed at
        [("#this", f"{base}/file.fits", "")], [("soda-sync", "ivo://ivoa.net/std/SODA#sync-1")]
    )
    link = _resolve(server.route("/dl/unnamed", Reply(body=unnamed.encode())))
    assert link.url and link.soda_url is None


@pytest.mark.parametrize(
    ("flavour", "shapes", "expected"),
    [
        ("sync-1.0", ("POS", "POLYGON", "CIRCLE"), "CIRCLE"),  # CIRCLE wherever it is listed
        ("SYNC-1", ("POLYGON", "POS"), "POS"),
        ("sync-1.0", ("POLYGON",), "POLYGON"),
        ("sync-1.0", (), "CIRCLE"),  # lists no shape: the plainest one
    ],
)
def test_tap_result_soda_descriptor_gives_each_row_its_id_and_the_shape(flavour, shapes, expected):
    from astropy.table import Table

    from obsharvest.assemble import image_works
    from obsharvest.query.adql import TARGET_COLUMN

    text = TAP_RESULT.replace("{flavour}", flavour).replace(
        "{shapes}", "\n".join(SHAPE_PARAMS[s] for s in shapes)
    )
    votable = parse_votable(io.BytesIO(text.encode()))
    found = kinds.service_descriptors(votable)
    soda = kinds.find(found, kinds.SODA_SYNC_STANDARD)
    assert soda is not None and soda.soda == "sync"
    assert soda.id_column == "obs_publisher_did" and soda.soda_shape == expected
    assert soda.endpoint == "http://x/soda?RESPONSEFORMAT=fits"  # SCALE="" is no value
    assert kinds.ServiceDescriptor.from_meta(soda.to_meta()) == soda

    rows = Table(votable.get_first_table().to_table(use_names_over_ids=True))
    rows[TARGET_COLUMN] = ["t"]
    rows["access_format"] = ["image/fits"]
    rows["obs_id"] = ["a"]
    rows.meta[kinds.DESCRIPTORS_META] = [d.to_meta() for d in found]
    (work,) = image_works(rows, {"t": Target("t", 1.0, 2.0)}, {})
    assert (work.soda_url, work.soda_id, work.soda_shape) == (
        "http://x/soda?RESPONSEFORMAT=fits",
        "ivo://x/a",
        expected,
    )
    request = CutoutRequest(work.soda_url, work.soda_id, 1.0, 2.0, 0.01, work.soda_shape)
    assert _query(request.url)[:2] == [("RESPONSEFORMAT", "fits"), ("ID", "ivo://x/a")]


def test_async_only_in_a_tap_result_is_no_sync_service():
    text = TAP_RESULT.replace("{flavour}", "async-1.0").replace("{shapes}", "")
    found = kinds.service_descriptors(parse_votable(io.BytesIO(text.encode())))
    assert [d.soda for d in found] == ["async"]
    assert kinds.find(found, kinds.SODA_SYNC_STANDARD) is None


# -- the request ------------------------------------------------------------------------


def test_each_shape_asks_for_at_least_the_circle():
    circle = CutoutRequest("http://x/soda", "ivo://x/a", 359.995, -37.0, 0.01)
    assert circle.params == [("ID", "ivo://x/a"), ("CIRCLE", "359.995 -37.0 0.01")]
    pos = CutoutRequest("http://x/soda", "ivo://x/a", 359.995, -37.0, 0.01, "POS")
    assert pos.params[1] == ("POS", "CIRCLE 359.995 -37.0 0.01")
    polygon = CutoutRequest("http://x/soda", "ivo://x/a", 359.995, -37.0, 0.01, "POLYGON")
    name, value = polygon.params[1]
    numbers = [float(v) for v in value.split()]
    ras, decs = numbers[0::2], numbers[1::2]
    assert name == "POLYGON" and len(ras) == 8
    assert all(0 <= ra < 360 for ra in ras)  # across RA 0 as ICRS degrees
    centre = SkyCoord(359.995, -37.0, unit="deg")
    vertices = SkyCoord(ras, decs, unit="deg")
    reach = 0.01 / math.cos(math.pi / 8)  # edges touch the circle: it is all inside
    assert max(abs(s - reach) for s in centre.separation(vertices).deg) < 1e-9
    # north first, then east: counter-clockwise as seen on the sky
    assert decs[0] > -37.0 and vertices[2].spherical_offsets_to(centre)[0].deg < 0


def test_a_service_that_refuses_get_is_sent_a_post_and_never_a_head(server, tmp_path):
    body = fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data=[[1.0, 2.0]])])
    blob = io.BytesIO()
    body.writeto(blob)

    def soda(request):
        if request.method != "POST":
            return Reply(405, b"use POST", {"Allow": "POST"})
        return Reply(200, blob.getvalue(), {"Content-Type": "application/fits"})

    url = server.route("/soda/sync", soda)
    request = CutoutRequest(f"{url}?RESPONSEFORMAT=fits", "ivo://x/a", 10.0, 20.0, 0.01)
    stored = fetch_cutout(request, ObjectStore(str(tmp_path)), "a/t.fits", timeout=(5, 10))
    assert stored.size == len(blob.getvalue())
    methods = [r.method for r in server.requests]
    assert methods == ["GET", "POST"]
    posted = parse_qsl(server.requests[1].body.decode())
    assert posted == [("ID", "ivo://x/a"), ("CIRCLE", "10.0 20.0 0.01")]
    assert server.requests[1].query == "RESPONSEFORMAT=fits"


def test_no_content_is_no_overlap_not_a_failure(server, tmp_path):
    """GAVO DaCHS answers a shape that misses the image with 204 and no body: that is an
    answer (no cutout for that target), and nothing is left in the store."""
    from obsharvest.errors import NoOverlapError

    url = server.route("/soda/none", Reply(204, b""))
    request = CutoutRequest(url, "ivo://x/a", 10.0, 20.0, 0.01)
    with pytest.raises(NoOverlapError, match="no overlap"):
        fetch_cutout(request, ObjectStore(str(tmp_path)), "a/t.fits", timeout=(5, 10))
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
    assert [r.method for r in server.requests] == ["GET"]


def test_no_soda_anywhere_names_what_was_looked_for(server):
    doc = _links_doc(
        [("#this", f"{server.base_url}/file.fits", ""), ("#proc", "", "other")],
        [("other", "ivo://example.org/std/Preview#image")],
    )
    url = server.route("/dl/none", Reply(body=doc.encode()))
    work = ImageWork(
        key="ivo://x/img",
        access_url=url,
        storage_key="c/img.fits",
        targets=(Target("t", 1.0, 2.0),),
        access_format=DATALINK_TYPE,
    )
    with requests.Session() as session, pytest.raises(CutoutUnavailableError) as caught:
        check_cutouts_offered([work], DatalinkResolver(session))
    said = str(caught.value)
    for words in ("ivo://ivoa.net/std/SODA#sync-1.0", "#cutout", "#proc", "TAP result"):
        assert words in said, said
    assert "\n" not in said and "cutout_fallback=image" in said


# -- a whole harvest against DaCHS' dialect ---------------------------------------------

TARGETS = (("seed", 62.0, -37.0), ("near", 62.05, -36.97), ("east", 62.4, -37.1))
RADIUS = 0.01


def _params(archive: EmbeddedArchive, output, targets_csv) -> HarvestParams:
    return HarvestParams.model_validate(
        {
            "service": {"tap_url": archive.tap_url},
            "targets": str(targets_csv),
            "constraints": {"bands": ["i"], "calib_levels": [2]},
            "output_url": str(output),
            "concurrency": {"datalink_batch": 4},
            "retry": {"read_timeout": 20.0},
            "products": {"mode": "cutout", "cutout_radius": RADIUS},
        }
    )


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.timeout(240)
def test_cutout_mode_on_a_dachs_like_archive_stores_cutouts_holding_each_target(tmp_path):
    targets_csv = tmp_path / "targets.csv"
    targets_csv.write_text("name,ra,dec\n" + "".join(f"{n},{r},{d}\n" for n, r, d in TARGETS))
    settings = ArchiveSettings(
        seed=7,
        n_visits=24,
        binning=10,
        dialect=Dialect.parse(["soda=proc"]),
        faults=FaultPlan.parse(["*.head_stall=1"], seed=11),  # DaCHS answers no HEAD
    )
    with EmbeddedArchive(settings) as archive:
        truth = {name: archive.truth(ra, dec) for name, ra, dec in TARGETS}
        # the archive speaks DaCHS' dialect: SODA as #proc, no #cutout row
        calexp = next(p for p in archive.sky.products if p.calib_level >= 2)
        links = requests.get(
            archive.datalink_url, params={"ID": calexp.obs_publisher_did}, timeout=10
        ).text
        assert "#proc" in links and "#cutout" not in links and 'ID="procsvc"' in links

        output = tmp_path / "out"
        summary = harvest_params(_params(archive, output, targets_csv))
        stats = archive.stats()
        assert summary.ok, summary.failures
        assert sum(s.get("methods", {}).get("HEAD", 0) for s in stats.values()) == 0, stats

        rows = ds.dataset(str(output / "metadata"), format="parquet").to_table().to_pylist()
        by_target = {name: (ra, dec) for name, ra, dec in TARGETS}
        for row in rows:
            did, name = row["obs_publisher_did"], row["obsh_target_name"]
            assert row["obsh_verdict"] == ("contains" if did in truth[name] else "outside"), row
            assert row["obsh_failure"] is None
        stored = [r for r in rows if r["obsh_stored"]]
        queried = {(r["obsh_target_name"], r["obs_publisher_did"]) for r in rows}
        expected = {(n, d) for n, dids in truth.items() for d in dids} & queried
        assert {(r["obsh_target_name"], r["obs_publisher_did"]) for r in stored} == expected
        assert stored, "the workload must store something to prove anything"
        assert stats["cutout"]["requests"] == len(stored), stats["cutout"]
        for row in stored:
            ra, dec = by_target[row["obsh_target_name"]]
            assert row["obsh_cutout_circle"] == f"{ra!r} {dec!r} {RADIUS!r}"
            path = row["obsh_storage_uri"].removeprefix("file://")
            with fits.open(path) as hdul:
                image = next(h for h in hdul if h.is_image and h.header.get("NAXIS") == 2)
                wcs = WCS(image.header)
                nx, ny = image.header["NAXIS1"], image.header["NAXIS2"]
                x, y = wcs.world_to_pixel(SkyCoord(ra, dec, unit="deg"))
                assert -0.5 <= x < nx - 0.5 and -0.5 <= y < ny - 0.5, (path, x, y, nx, ny)
                assert nx * ny < row["s_xel1"] * row["s_xel2"], "a cutout, not the image"

        archive.reset_stats()
        again = harvest_params(_params(archive, output, targets_csv))
        assert again.ok and again.downloaded == 0
        assert "cutout" not in archive.stats()
